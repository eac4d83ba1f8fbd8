"""Frozen inputs of GIDM pretraining (docs/method.md §3.1, steps 1–2): DINOv2 patch tokens of each frame and T5
tokens of each instruction.

* :class:`DinoPatchFeatures`: images ``(B, 3, S, S)`` in [0, 1] -> ImageNet-normalised -> DINOv2 (with or
  without registers, from ``transformers``) -> final-layer-norm patch tokens ``(B, (S / patch)^2, hidden)``
  (CLS and register tokens dropped, like ``x_norm_patchtokens`` of the official torch.hub model).
* :class:`T5InstructionFeatures`: instructions -> frozen T5 encoder ``last_hidden_state`` ``(B, L, d_model)``
  and mask ``(B, L)`` (L = longest instruction of the batch; padded slots hold T5 outputs, as the original's
  batch padded to its longest); each distinct instruction is encoded once, on its own, and cached (LRU).

Both load by Hub id or local path, or are built from a small config dict with random weights (tests, demo):
:func:`build_frozen_encoders`. :func:`encode_pair_features` turns a batch of frame pairs and instructions into
the GIDM's inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerBase, T5EncoderModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from lerobot_defi.models.text import InstructionCache, cached_t5_states, load_t5

DINOV2_OFFICIAL_ID = "facebook/dinov2-with-registers-base"  # = torch.hub dinov2_vitb14_reg
T5_OFFICIAL_ID = "google-t5/t5-base"


class DinoPatchFeatures(nn.Module):
    """Frozen DINOv2: ``images (B, 3, S, S)`` in [0, 1] -> patch tokens ``(B, N, hidden_size)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model.config, "model_type", None) not in ("dinov2", "dinov2_with_registers"):
            raise ValueError(f"expected a DINOv2 model, got model_type {model.config.model_type!r}")
        self.model = model.eval().requires_grad_(False)
        registers = (
            model.config.num_register_tokens if model.config.model_type == "dinov2_with_registers" else 0
        )
        self.num_prefix_tokens = 1 + registers  # CLS (+ registers) precede the patch tokens
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
        self._cache = InstructionCache(cache_size)

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

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return cached_t5_states(self._cache, self.model, self.tokenizer, texts)


def build_frozen_encoders(
    dinov2_path: str | None,
    dinov2_config: dict | None,
    t5_path: str | None,
    t5_config: dict | None,
    seed: int,
) -> tuple[DinoPatchFeatures, T5InstructionFeatures]:
    """DINOv2 patch features and T5 instruction features; random ones (from configs) are seeded by ``seed``
    so every process and the inspection tool rebuild the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dino = DinoPatchFeatures.load(dinov2_path, dinov2_config)
        t5 = T5InstructionFeatures.load(t5_path, t5_config)
    return dino, t5


def encode_pair_features(
    dino: DinoPatchFeatures, t5: T5InstructionFeatures, frames: Tensor, tasks: list[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """``frames (B, 2, 3, S, S)`` in [0, 1] -> visual tokens ``(B, 2, N, D)``, text ``(B, L, Dt)``, mask ``(B, L)``."""
    b = frames.shape[0]
    visual = dino(frames.flatten(0, 1)).unflatten(0, (b, 2))
    text, mask = t5(tasks)
    return visual.float(), text.float(), mask
