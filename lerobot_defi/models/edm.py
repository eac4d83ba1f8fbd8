"""EDM (Karras et al. 2022) pieces as small pure functions: preconditioning, noise-level densities,
inference schedules and the first-order sampler.

Two parameterisations are used in DeFI:

* the action head: EDM "F-prediction" with ``sigma_data = 0.5`` (docs/method.md §4.3g);
* the GFDM video model: SVD's v-prediction, which is EDM with ``sigma_data = 1`` and a negated ``c_out``
  (docs/method.md §2.5).

Shapes: ``sigma`` is a tensor broadcastable against the sample (callers pass ``(B, 1, 1)`` or ``(B,)``).
"""

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning ``(c_skip, c_out, c_in, c_noise)`` for noise level ``sigma``.

    ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s*sd/sqrt(s^2+sd^2)``, ``c_in = 1/sqrt(s^2+sd^2)``,
    ``c_noise = ln(s)/4``.
    """
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def v_prediction_scalings(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SVD's v-prediction preconditioning: ``c_skip = 1/(s^2+1)``, ``c_out = -s/sqrt(s^2+1)``,
    ``c_in = 1/sqrt(s^2+1)``, ``c_noise = ln(s)/4``."""
    total = sigma**2 + 1.0
    return 1.0 / total, -sigma / total.sqrt(), 1.0 / total.sqrt(), sigma.log() / 4.0


def edm_training_target(clean: Tensor, noisy: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """Regression target of ``F`` so that ``mse(F, target)`` equals the EDM-weighted denoising loss:
    ``(clean - c_skip*noisy) / c_out``."""
    view = (-1,) + (1,) * (clean.ndim - 1)
    c_skip, c_out, _, _ = edm_scalings(sigma.reshape(view), sigma_data)
    return (clean - c_skip * noisy) / c_out


def sample_log_logistic_sigmas(
    shape: tuple[int, ...] | int,
    loc: float,
    scale: float,
    sigma_min: float,
    sigma_max: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise levels from a log-logistic density truncated to ``[sigma_min, sigma_max]``.

    Inverse-CDF sampling: ``u ~ U(F(lo), F(hi))`` with ``F`` the logistic CDF of
    ``(ln sigma - loc) / scale``, then ``sigma = exp(loc + scale * logit(u))``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    lo = torch.sigmoid(torch.tensor((math.log(sigma_min) - loc) / scale, dtype=torch.float64))
    hi = torch.sigmoid(torch.tensor((math.log(sigma_max) - loc) / scale, dtype=torch.float64))
    u = torch.rand(shape, generator=generator, device=generator.device if generator else device)
    u = (u.double() * (hi - lo) + lo).to(u.device)
    sigma = torch.exp(loc + scale * torch.logit(u))
    return sigma.float().clamp(sigma_min, sigma_max).to(device)


def sample_log_normal_sigmas(
    shape: tuple[int, ...] | int,
    mean: float,
    std: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``ln sigma ~ N(mean, std^2)`` (SVD / GFDM training, docs/method.md §2.5: mean 0.7, std 1.6)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    normal = torch.randn(shape, generator=generator, device=generator.device if generator else device)
    return torch.exp(mean + std * normal).to(device)


def exponential_sigmas(num_steps: int, sigma_min: float, sigma_max: float, device=None) -> Tensor:
    """``num_steps`` noise levels evenly spaced in ``ln sigma`` from ``sigma_max`` down to ``sigma_min``,
    followed by a final 0 (length ``num_steps + 1``)."""
    # Made on ``device`` directly: a CPU tensor copied over would break CUDA-graph capture.
    log_sigmas = torch.linspace(
        math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64, device=device
    )
    sigmas = log_sigmas.exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def sample_first_order(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor) -> Tensor:
    """First-order DPM-Solver in ``ln sigma`` (identical to DDIM / Euler for EDM).

    ``denoiser(x, sigma)`` returns ``D(x; sigma)`` for a batch-wide scalar ``sigma`` tensor. Each step
    ``x <- (s_next/s) * x + (1 - s_next/s) * D(x; s)``; the final step to ``s = 0`` returns ``D``.
    ``x``: the initial noise already scaled by ``sigmas[0]``.
    """
    for sigma, sigma_next in itertools.pairwise(sigmas):
        denoised = denoiser(x, sigma)
        ratio = sigma_next / sigma
        x = ratio * x + (1.0 - ratio) * denoised
    return x
