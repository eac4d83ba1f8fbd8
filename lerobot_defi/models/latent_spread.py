"""Give a randomly initialised image VAE the latent spread of Stable Video Diffusion's VAE.

The GFDM reads the VAE latents of the current frame *unscaled* next to unit-variance noise at σ = 700
(docs/method.md §4.3b). SVD's VAE gives latents of std ≈ 1 / scaling_factor ≈ 5.5, so the image dominates the
UNet's input. A freshly initialised VAE (diffusers' default init) gives std ≈ 0.2-0.3: the image is then ~20x weaker
than the noise, the frozen features follow the noise draw more than the scene, and a policy trained on them learns
to ignore them (docs/training.md#s4). A random GFDM built from an architecture (the tiny preset, the benchmark's
stand-ins) is therefore calibrated once at construction; pretrained weights are never touched.
"""

import torch
import torch.nn.functional as F
from torch import nn


def calibration_images(image_size: int, samples: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images ``(samples, 3, image_size, image_size)`` in [-1, 1]: bilinear upsampling of 8 x 8
    uniform noise (scene-like: large uniform regions and edges, unlike per-pixel noise)."""
    generator = torch.Generator().manual_seed(seed)
    # on the CPU even under a `with torch.device("cuda")` block, so the images are the same on every device
    coarse = torch.rand(samples, 3, 8, 8, generator=generator, device="cpu") * 2 - 1
    return F.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def match_latent_spread(
    vae: nn.Module, target_std: float | None = None, image_size: int | None = None, seed: int = 0
) -> float:
    """Scale the mean half of ``vae.quant_conv`` so that posterior-mode latents of :func:`calibration_images`
    have standard deviation ``target_std`` (default ``1 / vae.config.scaling_factor``, SVD's spread). Works in
    the VAE's own dtype and device; returns the factor applied."""
    if target_std is None:
        target_std = 1.0 / vae.config.scaling_factor
    weight = vae.quant_conv.weight
    size = image_size or int(vae.config.sample_size)
    images = calibration_images(size, seed=seed).to(device=weight.device, dtype=weight.dtype)
    latents = vae.encode(images).latent_dist.mode().float()
    factor = target_std / latents.std().clamp_min(1e-12).item()
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    return factor
