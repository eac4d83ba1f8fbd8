"""Frozen instruction encoders with a per-instruction cache (spec 2.2, 4.3 a, 8 item 16).

One CLIP ViT-B/32 text tower gives both

* the GFDM cross-attention context: ``last_hidden_state`` of the instruction padded/truncated to 20 tokens,
  ``(B, 20, 512)`` (the policy duplicates it on channels to the UNet's 1024);
* the goal token of the action head: the projected pooled (end-of-text) embedding at the full 77-token
  length, ``(B, 512)``, equal to OpenAI CLIP's ``encode_text``.

A T5 encoder gives the GIDM's instruction tokens ``(B, L, 768)`` with a padding mask ``(B, L)`` (L = longest
instruction in the batch).

All encoders are frozen; every instruction string is encoded once and cached (the cache lives outside the
state dict). Pretrained models load by Hub id or local path; for tests and the CPU demo, small random models
are built from config dicts with a byte-level tokenizer constructed in code (no download).
"""

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def build_byte_level_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A deterministic byte-level tokenizer (special tokens + the 256 byte symbols, no merges), built offline.

    ``kind="clip"``: ``<|startoftext|> text <|endoftext|>``, padded with ``<|endoftext|>`` (ids 0 and 1);
    ``kind="t5"``: ``text </s>``, padded with ``<pad>`` (id 0), like T5.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = {"clip": CLIP_SPECIAL_TOKENS, "t5": T5_SPECIAL_TOKENS}[kind]
    symbols = list(specials) + sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if kind == "clip":
        bos, eos = CLIP_SPECIAL_TOKENS
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, 0), (eos, 1)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=eos, model_max_length=77
        )
    pad, eos, unk = T5_SPECIAL_TOKENS
    backend.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=pad, unk_token=unk, model_max_length=512
    )


def _config_without_private_keys(config) -> dict:
    return {
        k: v
        for k, v in config.to_diff_dict().items()
        if not k.startswith("_") and k != "transformers_version"
    }


def _load_text_model(model_class, config_class, path, config, tokenizer_dir, kind: str, skeleton: bool):
    """A frozen text model + tokenizer, and the architecture dict to rebuild it offline.

    ``path`` (Hub id or folder) loads pretrained weights unless ``skeleton`` (weights come from elsewhere);
    otherwise the model is built from ``config``. ``tokenizer_dir`` overrides where the tokenizer comes from.
    """
    if path is not None and not skeleton:
        model = model_class.from_pretrained(path)
    elif config is not None:
        model = model_class(config_class(**config))
    else:
        raise ValueError(f"{kind} text encoder: give its path (Hub id or folder) or an architecture config")
    tokenizer = _load_tokenizer(tokenizer_dir, path, kind)
    return model, tokenizer, _config_without_private_keys(model.config)


def load_clip_text(
    path: str | None, config: dict | None, tokenizer_dir: str | Path | None = None, *, skeleton: bool = False
) -> tuple[CLIPTextModelWithProjection, PreTrainedTokenizerBase, dict]:
    """CLIP text tower with projection + tokenizer + architecture dict (see :func:`_load_text_model`)."""
    return _load_text_model(
        CLIPTextModelWithProjection, CLIPTextConfig, path, config, tokenizer_dir, "clip", skeleton
    )


def load_t5(
    path: str | None, config: dict | None, tokenizer_dir: str | Path | None = None, *, skeleton: bool = False
) -> tuple[T5EncoderModel, PreTrainedTokenizerBase, dict]:
    """T5 encoder + tokenizer + architecture dict (see :func:`_load_text_model`)."""
    return _load_text_model(T5EncoderModel, T5Config, path, config, tokenizer_dir, "t5", skeleton)


def _load_tokenizer(tokenizer_dir: str | Path | None, path: str | None, kind: str) -> PreTrainedTokenizerBase:
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if path is not None:
        return AutoTokenizer.from_pretrained(path)
    return build_byte_level_tokenizer(kind)


class InstructionCache:
    """LRU cache of per-instruction values: each distinct string is encoded once."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[str, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: str) -> bool:
        return text in self._entries

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, texts: list[str], encode) -> list:
        """Values of ``texts``; ``encode(missing_texts) -> list`` computes the ones not cached yet."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._entries))
        if missing:
            self._entries.update(zip(missing, encode(missing)))
        values = []
        for text in texts:
            self._entries.move_to_end(text)
            values.append(self._entries[text])
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return values


def pad_token_states(states: list[Tensor], pad_to_multiple_of: int = 1) -> tuple[Tensor, Tensor]:
    """``[(L_i, D)]`` -> zero-padded ``(B, L, D)`` and mask ``(B, L)`` (True = token), L = the longest rounded up
    to a multiple of ``pad_to_multiple_of``."""
    longest = max(s.shape[0] for s in states)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    hidden = states[0].new_zeros(len(states), length, states[0].shape[-1])
    mask = torch.zeros(len(states), length, dtype=torch.bool, device=hidden.device)
    for i, state in enumerate(states):
        hidden[i, : state.shape[0]] = state
        mask[i, : state.shape[0]] = True
    return hidden, mask


@torch.no_grad()
def encode_t5_each(
    model: T5EncoderModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> list[Tensor]:
    """T5 states ``(L_i, D)`` of each text encoded on its own (no padding), so they do not depend on which other
    instructions shared the batch: runs are reproducible to the bit."""
    device = next(model.parameters()).device
    states = []
    for text in texts:
        input_ids = tokenizer([text], return_tensors="pt").input_ids.to(device)
        states.append(model(input_ids=input_ids).last_hidden_state[0].float())
    return states


@dataclass
class InstructionEmbeddings:
    """Encoded instructions of a batch.

    ``clip_hidden (B, Lc, Dc)``, ``clip_pooled (B, P)``, ``t5_hidden (B, Lt, Dt)``, ``t5_mask (B, Lt)`` bool.
    """

    clip_hidden: Tensor
    clip_pooled: Tensor
    t5_hidden: Tensor | None
    t5_mask: Tensor | None


class InstructionEncoders(nn.Module):
    """Frozen CLIP text (+ optional T5) encoders with an LRU cache keyed by instruction string."""

    def __init__(
        self,
        clip: CLIPTextModelWithProjection,
        clip_tokenizer: PreTrainedTokenizerBase,
        t5: T5EncoderModel | None,
        t5_tokenizer: PreTrainedTokenizerBase | None,
        context_length: int = 20,
        goal_length: int = 77,
        cache_size: int = 4096,
    ):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.t5 = t5.eval().requires_grad_(False) if t5 is not None else None
        self.clip_tokenizer = clip_tokenizer
        self.t5_tokenizer = t5_tokenizer
        self.context_length = context_length
        self.goal_length = goal_length
        # T5 tokens are padded to the longest instruction of the batch, rounded up to this multiple (padding is
        # masked, so results do not change; a multiple > 1 keeps shapes static for compiled code).
        self.pad_to_multiple_of = 1
        self._cache = InstructionCache(cache_size)

    def train(self, mode: bool = True):
        # Frozen: stay in eval mode (no dropout) whatever the parent does.
        return super().train(False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # Cached embeddings live on the encoders' device and dtype: drop them when the module moves.
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        device = self.clip.device
        context_ids = self.clip_tokenizer(
            texts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        # The official context is the plain last hidden state of the padded ids (no attention mask).
        hidden = self.clip(input_ids=context_ids).last_hidden_state.float()
        goal = self.clip_tokenizer(
            texts, padding="max_length", max_length=self.goal_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        pooled = self.clip(input_ids=goal).text_embeds.float()
        t5_states: list[Tensor | None] = [None] * len(texts)
        if self.t5 is not None:
            t5_states = encode_t5_each(self.t5, self.t5_tokenizer, texts)
        return [(hidden[i], pooled[i], t5_states[i]) for i in range(len(texts))]

    def forward(self, texts: list[str]) -> InstructionEmbeddings:
        """Encode a batch of instructions; each distinct string is computed once and then cached."""
        entries = self._cache.lookup(texts, self._encode_uncached)
        clip_hidden = torch.stack([e[0] for e in entries])
        clip_pooled = torch.stack([e[1] for e in entries])
        if self.t5 is None:
            return InstructionEmbeddings(clip_hidden, clip_pooled, None, None)
        t5_hidden, t5_mask = pad_token_states([e[2] for e in entries], self.pad_to_multiple_of)
        return InstructionEmbeddings(clip_hidden, clip_pooled, t5_hidden, t5_mask)
