"""EDM preconditioning, noise densities, schedules and the sampler against the formulas (docs/method.md §4.3g, §5.1)."""

import math

import pytest
import torch

from lerobot_defi.models.edm import (
    edm_scalings,
    edm_training_target,
    exponential_sigmas,
    sample_first_order,
    sample_log_logistic_sigmas,
    v_prediction_scalings,
)


def edm_denoise(model_output_fn, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Denoised estimate ``D(x; s) = c_skip*x + c_out*F(c_in*x, c_noise)``; ``sigma`` has shape ``(B,)``."""
    view = (-1,) + (1,) * (x.ndim - 1)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma.reshape(view), sigma_data)
    return c_skip * x + c_out * model_output_fn(c_in * x, c_noise.reshape(-1))


@pytest.mark.parametrize("sigma", [0.001, 0.05, 0.5, 1.0, 7.3, 80.0])
def test_edm_scalings_match_karras_formulas(sigma):
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor(sigma, dtype=torch.float64), sd)
    assert c_skip.item() == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
    assert c_out.item() == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4, rel=1e-12, abs=1e-15)


def test_v_prediction_is_edm_with_unit_sigma_data_and_negated_output():
    sigma = torch.tensor([0.1, 1.0, 700.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = v_prediction_scalings(sigma)
    e_skip, e_out, e_in, e_noise = edm_scalings(sigma, 1.0)
    torch.testing.assert_close(c_skip, e_skip)
    torch.testing.assert_close(c_out, -e_out)
    torch.testing.assert_close(c_in, e_in)
    torch.testing.assert_close(c_noise, e_noise)
    assert c_noise[-1].item() == pytest.approx(1.638, abs=1e-3)  # the GFDM feature timestep at sigma 700


def test_training_target_gives_the_edm_weighted_denoising_loss():
    torch.manual_seed(0)
    sd = 0.5
    clean, noise = torch.randn(4, 10, 7), torch.randn(4, 10, 7)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    noisy = clean + sigma[:, None, None] * noise
    raw_output = torch.randn(4, 10, 7)
    target = edm_training_target(clean, noisy, sigma, sd)
    f_loss = ((raw_output - target) ** 2).mean(dim=(1, 2))
    denoised = edm_denoise(lambda x, c: raw_output, noisy, sigma, sd)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    weighted = weight * ((denoised - clean) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(f_loss, weighted, rtol=1e-4, atol=1e-5)


def test_inference_schedule_is_the_official_sigma_list():
    sigmas = exponential_sigmas(10, sigma_min=1.0, sigma_max=80.0)
    official = [80, 49.16, 30.21, 18.57, 11.41, 7.01, 4.31, 2.65, 1.63, 1.0, 0]
    assert sigmas.tolist() == pytest.approx(official, abs=5e-3)


def test_log_logistic_density_quantiles_and_truncation():
    generator = torch.Generator().manual_seed(0)
    sigma = sample_log_logistic_sigmas(200_000, math.log(0.5), 0.5, 0.001, 80.0, generator=generator)
    assert sigma.min() >= 0.001 and sigma.max() <= 80.0
    quantiles = torch.quantile(sigma[:100_000], torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))
    # docs/method.md §4.3g (measured on the official sampler): 10/25/50/75/90 % = 0.17/0.29/0.50/0.86/1.49.
    assert quantiles.tolist() == pytest.approx([0.17, 0.29, 0.50, 0.86, 1.49], rel=0.04)


def test_first_order_sampler_step_and_exact_denoiser():
    sigmas = exponential_sigmas(10, 1.0, 80.0)
    target = torch.full((2, 10, 7), 0.3)
    calls = []

    def denoiser(x, sigma):
        calls.append(float(sigma))
        return target

    out = sample_first_order(denoiser, torch.randn(2, 10, 7) * 80, sigmas)
    torch.testing.assert_close(out, target)  # the last step (to sigma 0) returns D exactly
    assert calls == pytest.approx(sigmas[:-1].tolist())
    # one step: x' = (s1/s0) x + (1 - s1/s0) D
    x0 = torch.randn(1, 3)
    step = sample_first_order(lambda x, s: torch.zeros_like(x), x0, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(step, 0.5 * x0)
