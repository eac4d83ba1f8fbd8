"""Frozen inputs of GIDM pretraining (spec 3.1 steps 1-2): DINOv2 patch tokens of each frame and T5 tokens of
each instruction.

* :class:`DinoPatchFeatures`: images ``(B, 3, S, S)`` in [0, 1] -> ImageNet-normalised -> DINOv2 (with or
  without registers, from ``transformers``) -> final-layer-norm patch tokens ``(B, (S / patch)^2, hidden)``
  (CLS and register tokens dropped, like ``x_norm_patchtokens`` of the official torch.hub model).
* :class:`T5InstructionFeatures`: instructions -> frozen T5 encoder ``last_hidden_state`` ``(B, L, d_model)``
  and mask ``(B, L)`` (L = longest instruction of the batch); each distinct instruction is encoded once and
  cached (LRU).

Both load by Hub id or local path, or are built from a small config dict with random weights (tests, demo).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerBase, T5EncoderModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from lerobot_defi.models.text import load_t5

DINOV2_OFFICIAL_ID = "facebook/dinov2-with-registers-base"  # = torch.hub dinov2_vitb14_reg
T5_OFFICIAL_ID = "google-t5/t5-base"


class DinoPatchFeatures(nn.Module):
    """Frozen DINOv2: ``images (B, 3, S, S)`` in [0, 1] -> patch tokens ``(B, N, hidden_size)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model.config, "model_type", None) not in ("dinov2", "dinov2_with_registers"):
            raise ValueError(f"expected a DINOv2 model, got model_type {model.config.model_type!r}")
        self.model = model.eval().requires_grad_(False)
        self.num_prefix_tokens = 1 + getattr(model.config, "num_register_tokens", 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def load(cls, path: str | None, config: dict | None = None) -> DinoPatchFeatures:
        """Pretrained weights from ``path`` (Hub id or folder), else random weights from ``config``
        (a ``Dinov2WithRegistersConfig`` dict; ``model_type: dinov2`` selects the model without registers)."""
        if path is not None:
            return cls(AutoModel.from_pretrained(path))
        if config is None:
            raise ValueError("DINOv2: give `dinov2_path` (Hub id or folder) or `dinov2_config`")
        values = dict(config)
        model_type = values.pop("model_type", "dinov2_with_registers")
        return cls(AutoModel.from_config(AutoConfig.for_model(model_type, **values)))

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always eval

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def num_patches(self, image_size: int) -> int:
        """Patch tokens per image of ``image_size`` pixels (256 for 224 px and patch 14)."""
        patch = self.model.config.patch_size
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of the DINOv2 patch size {patch}")
        return (image_size // patch) ** 2

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        pixels = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        tokens = self.model(pixel_values=pixels).last_hidden_state  # (B, prefix + N, D), final layer norm
        return tokens[:, self.num_prefix_tokens :]


class T5InstructionFeatures(nn.Module):
    """Frozen T5 encoder with a per-instruction LRU cache: ``list[str]`` -> ``(B, L, d_model)``, mask ``(B, L)``."""

    def __init__(self, model: T5EncoderModel, tokenizer: PreTrainedTokenizerBase, cache_size: int = 8192):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    @classmethod
    def load(cls, path: str | None, config: dict | None = None) -> T5InstructionFeatures:
        model, tokenizer, _ = load_t5(path, config)
        return cls(model, tokenizer)

    def train(self, mode: bool = True):
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached states live on the encoder's device and dtype
        return super()._apply(fn, *args, **kwargs)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            device = next(self.model.parameters()).device
            tokens = self.tokenizer(missing, padding=True, return_tensors="pt").to(device)
            states = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            lengths = tokens.attention_mask.sum(-1).tolist()
            for i, text in enumerate(missing):
                self._cache[text] = states.last_hidden_state[i, : lengths[i]].float()
        entries = []
        for text in texts:
            self._cache.move_to_end(text)
            entries.append(self._cache[text])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        longest = max(e.shape[0] for e in entries)
        hidden = entries[0].new_zeros(len(texts), longest, entries[0].shape[-1])
        mask = torch.zeros(len(texts), longest, dtype=torch.bool, device=hidden.device)
        for i, entry in enumerate(entries):
            hidden[i, : entry.shape[0]] = entry
            mask[i, : entry.shape[0]] = True
        return hidden, mask
