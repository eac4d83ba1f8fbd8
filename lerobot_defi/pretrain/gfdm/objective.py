"""The GFDM objective of a training run (docs/method.md §2.5): the UNet being trained, the frozen VAE and CLIP text
tower on the run's device, and the per-video loss of a batch of clips. The trainer optimises it; the validation
evaluates it and samples videos with its parts.

Per batch: clips ``(B, F, 3, S, S)`` (or cached latents) -> scaled latents ``x0 (B, F, 4, S/8, S/8)`` -> first-frame
condition ``x0[:, 0] / scaling_factor`` -> CLIP text context ``(B, L, cross_attention_dim)`` (zeroed per video with
probability ``text_dropout``) -> EDM v-objective ``(B,)`` (``gfdm_v_objective_loss``).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from lerobot_defi.models.edm import sample_log_normal_sigmas
from lerobot_defi.models.gfdm import text_context_from_clip
from lerobot_defi.models.gfdm_video import encode_video_latents, gfdm_v_objective_loss
from lerobot_defi.models.text import InstructionEncoders
from lerobot_defi.pretrain.gfdm.config import GFDMObjectiveConfig
from lerobot_defi.pretrain.gfdm.lerobot_source import frames_to_model_range


class GFDMObjective:
    """``losses(batch)``: per-video losses of the UNet (as accelerate prepared it); ``clean_latents`` and
    ``text_context``: the model inputs of a batch. ``frames_per_batch`` bounds the frames VAE-encoded at once."""

    def __init__(
        self,
        accelerator: Accelerator,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text: InstructionEncoders,
        config: GFDMObjectiveConfig,
        frames_per_batch: int,
    ):
        self.accelerator = accelerator
        self.unet = unet
        self.vae = vae
        self.text = text
        self.config = config
        self.frames_per_batch = frames_per_batch
        self.scaling_factor = vae.config.scaling_factor
        self.cross_attention_dim = accelerator.unwrap_model(unet).config.cross_attention_dim

    def clean_latents(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``(B, F, 4, h, w)`` float32 of a batch (read from the cache or VAE-encoded)."""
        device = self.accelerator.device
        if "latents" in batch:
            return batch["latents"].to(device, torch.float32)
        frames = batch["frames"].to(device)
        b, f = frames.shape[:2]
        latents = encode_video_latents(
            self.vae,
            frames_to_model_range(frames.flatten(0, 1)),
            sample_posterior=True,
            chunk_size=self.frames_per_batch,
            generator=generator,
        )
        return latents.reshape(b, f, *latents.shape[1:])

    def text_context(self, tasks: list[str]) -> torch.Tensor:
        """``(B, L, cross_attention_dim)`` CLIP context of the instructions."""
        hidden = self.text(tasks).clip_hidden.to(self.accelerator.device)
        return text_context_from_clip(hidden, self.cross_attention_dim)

    def losses(
        self, batch: dict, *, text_dropout: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-video losses ``(B,)`` of a batch (random draws from ``generator``, else the global RNG)."""
        device = self.accelerator.device
        clean = self.clean_latents(batch, generator)
        b = clean.shape[0]
        context = self.text_context(batch["task"])
        if text_dropout > 0:
            keep = torch.rand(b, device=device, generator=generator) >= text_dropout
            context = context * keep[:, None, None].to(context.dtype)
        sigmas = sample_log_normal_sigmas(
            b, self.config.sigma_log_mean, self.config.sigma_log_std, device=device, generator=generator
        )
        noise = torch.randn(clean.shape, device=device, generator=generator)
        ids = torch.tensor([self.config.added_time_ids], device=device).expand(b, -1)
        with self.accelerator.autocast():
            return gfdm_v_objective_loss(
                self.unet, clean, clean[:, 0] / self.scaling_factor, context, ids, sigmas, noise
            )
