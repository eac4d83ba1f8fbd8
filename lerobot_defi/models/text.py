"""Frozen instruction encoders with a per-instruction cache (docs/method.md §2.2, §4.3a, §8.16).

One CLIP ViT-B/32 text tower gives both

* the GFDM cross-attention context: ``last_hidden_state`` of the instruction padded/truncated to 20 tokens,
  ``(B, 20, 512)`` (the policy duplicates it on channels to the UNet's 1024);
* the goal token of the action head: the projected pooled (end-of-text) embedding at the full 77-token
  length, ``(B, 512)``, equal to OpenAI CLIP's ``encode_text``.

A T5 encoder gives the GIDM's instruction tokens ``(B, L, 768)`` with a padding mask ``(B, L)`` (L = longest
instruction in the batch). As in the original, padded slots hold T5 outputs, not zeros (docs/method.md §5.4).

The CLIP context and T5 get the tokenizer's attention mask, as the original passes it (docs/method.md §2.2,
§3.1). All encoders are frozen; every instruction string is encoded once and cached (the cache lives outside the
state dict). The one exception is T5 with dropout (the original trains with it on, docs/method.md §8.26): then
the batch is encoded afresh. Pretrained models load by Hub id or local path; for tests and the CPU demo, small random
models are built from config dicts with a byte-level tokenizer constructed in code (no download).
"""

from collections import OrderedDict
from contextlib import contextmanager
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
# Cached T5 states are padded to a multiple of this many tokens (re-encoded longer when a batch needs it).
T5_CACHE_LENGTH = 32


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

    def store(self, text: str, value) -> None:
        """Replace the value of ``text`` if it is still cached."""
        if text in self._entries:
            self._entries[text] = value


def _at_least_float32(tensor: Tensor) -> Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@torch.no_grad()
def encode_clip_context(
    model: CLIPTextModelWithProjection, tokenizer: PreTrainedTokenizerBase, texts: list[str], length: int
) -> Tensor:
    """CLIP ``last_hidden_state`` ``(B, length, D)`` of the texts padded/truncated to ``length`` tokens, run with
    the tokenizer's attention mask as the original does (docs/method.md §2.2): real-token positions do not depend on the
    mask (causal attention), the padded slots that the UNet's cross-attention reads do."""
    tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    tokens = tokens.to(model.device)
    hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return _at_least_float32(hidden)


@torch.no_grad()
def encode_t5_batch(
    model: T5EncoderModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], pad_to_multiple_of: int = 1
) -> tuple[Tensor, Tensor]:
    """The original's T5 call (docs/method.md §3.1, step 1): the texts tokenised together, padded to the longest (rounded up
    to ``pad_to_multiple_of``), ids and attention mask into T5 -> ``last_hidden_state (B, L, D)`` and the mask
    ``(B, L)`` bool. Padded slots hold T5 outputs. Runs in the model's current mode (dropout if training)."""
    tokens = tokenizer(texts, padding="longest", pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    tokens = tokens.to(next(model.parameters()).device)
    hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return _at_least_float32(hidden), tokens.attention_mask.bool()


def _encode_t5_for_cache(
    model: T5EncoderModel, tokenizer: PreTrainedTokenizerBase, text: str, length_multiple: int
) -> tuple[Tensor, int]:
    """One instruction encoded on its own (bit-reproducible whatever else is in the batch), padded to a
    multiple of ``length_multiple``: ``(states (M, D), number of real tokens)``."""
    hidden, mask = encode_t5_batch(model, tokenizer, [text], pad_to_multiple_of=length_multiple)
    return hidden[0], int(mask[0].sum())


def cached_t5_states(
    cache: InstructionCache,
    model: T5EncoderModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    pad_to_multiple_of: int = 1,
) -> tuple[Tensor, Tensor]:
    """``(B, L, D)`` T5 states and mask ``(B, L)`` equal to :func:`encode_t5_batch` of ``texts`` (in eval mode),
    from per-instruction cache entries.

    With T5's padding mask, the output at a padded slot depends only on its instruction and position (keys at
    padded slots are masked; relative position bias depends on positions only), so each instruction is encoded
    once padded to a multiple of :data:`T5_CACHE_LENGTH` and sliced to the batch's length; an entry shorter
    than that length is re-encoded longer.
    """
    entries = cache.lookup(
        texts, lambda missing: [_encode_t5_for_cache(model, tokenizer, t, T5_CACHE_LENGTH) for t in missing]
    )
    length = _round_up(max(count for _, count in entries), pad_to_multiple_of)
    for i, (text, (states, _)) in enumerate(zip(texts, entries)):
        if states.shape[0] < length:
            entries[i] = _encode_t5_for_cache(model, tokenizer, text, _round_up(length, T5_CACHE_LENGTH))
            cache.store(text, entries[i])
    hidden = torch.stack([states[:length] for states, _ in entries])
    counts = torch.tensor([count for _, count in entries], device=hidden.device)
    mask = torch.arange(length, device=hidden.device)[None, :] < counts[:, None]
    return hidden, mask


@contextmanager
def dropout_active(model: nn.Module):
    """Run a frozen model in training mode (dropout on) inside the block; back to eval mode after."""
    model.train()
    try:
        yield model
    finally:
        model.eval()


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
        # T5 tokens are padded to the longest instruction of the batch, rounded up to this multiple (slots past
        # the longest are masked for every sample, so results do not change; a multiple > 1 keeps shapes static
        # for compiled code).
        self.pad_to_multiple_of = 1
        self._cache = InstructionCache(cache_size)
        self._t5_cache = InstructionCache(cache_size)

    def train(self, mode: bool = True):
        # Frozen: stay in eval mode (no dropout) whatever the parent does; T5 dropout is asked for per call.
        return super().train(False)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._t5_cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # Cached embeddings live on the encoders' device and dtype: drop them when the module moves.
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> list[tuple[Tensor, Tensor]]:
        """Per text: CLIP context ``(context_length, D)`` and pooled goal ``(P,)``."""
        hidden = encode_clip_context(self.clip, self.clip_tokenizer, texts, self.context_length)
        goal = self.clip_tokenizer(
            texts, padding="max_length", max_length=self.goal_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.clip.device)
        pooled = _at_least_float32(self.clip(input_ids=goal).text_embeds)
        return [(hidden[i], pooled[i]) for i in range(len(texts))]

    def forward(self, texts: list[str], t5_dropout: bool = False) -> InstructionEmbeddings:
        """Encode a batch of instructions; each distinct string is computed once and then cached.

        ``t5_dropout``: T5 runs in training mode (dropout on) on the batch padded to its longest, as in the
        original's training step; it bypasses the T5 cache.
        """
        entries = self._cache.lookup(texts, self._encode_uncached)
        clip_hidden = torch.stack([e[0] for e in entries])
        clip_pooled = torch.stack([e[1] for e in entries])
        if self.t5 is None:
            return InstructionEmbeddings(clip_hidden, clip_pooled, None, None)
        if t5_dropout:
            with dropout_active(self.t5):
                t5_hidden, t5_mask = encode_t5_batch(
                    self.t5, self.t5_tokenizer, texts, self.pad_to_multiple_of
                )
        else:
            t5_hidden, t5_mask = cached_t5_states(
                self._t5_cache, self.t5, self.t5_tokenizer, texts, self.pad_to_multiple_of
            )
        return InstructionEmbeddings(clip_hidden, clip_pooled, t5_hidden, t5_mask)
