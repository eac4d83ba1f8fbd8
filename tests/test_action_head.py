"""Action head: shapes, the causal cross-attention mask, AdaLN, context caching, loss, sampling
(docs/method.md §4.3f, §4.3g)."""

import dataclasses

import pytest
import torch

from lerobot_defi.models.action_head import ActionHead, ActionHeadConfig, causal_mask
from lerobot_defi.models.edm import edm_scalings


def small_head(**overrides) -> ActionHead:
    cfg = ActionHeadConfig(dim=32, num_heads=2, encoder_layers=1, decoder_layers=2, **overrides)
    return ActionHead(
        cfg,
        action_dim=7,
        chunk_size=10,
        goal_dim=16,
        video_dim=24,
        latent_action_dim=20,
        context_length=1 + 8 + 4,
    )


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 1, 16, generator=g),
        torch.randn(batch, 8, 24, generator=g),
        torch.randn(batch, 4, 20, generator=g),
    )


def test_official_cross_attention_mask_is_upper_left_triangle():
    mask = causal_mask(10, 229)
    assert mask.shape == (10, 229)
    for i in range(10):
        assert mask[i, : i + 1].all() and not mask[i, i + 1 :].any()
    head = ActionHead(ActionHeadConfig(), 7, 10, 512, 384, 768, context_length=229)
    torch.testing.assert_close(head.cross_attention_mask, mask)
    torch.testing.assert_close(head.self_attention_mask, causal_mask(10, 10))
    assert (
        ActionHead(
            dataclasses.replace(ActionHeadConfig(), causal_cross_attention=False), 7, 10, 512, 384, 768, 229
        ).cross_attention_mask
        is None
    )


def test_official_size_trainable_parameter_count():
    with torch.device("meta"):
        head = ActionHead(ActionHeadConfig(), 7, 10, 512, 384, 768, context_length=229)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in head.named_children()}
    # docs/method.md §6.1: encoder 7.09 M, decoder 13.00 M, sigma-emb 0.59 M, lang_emb 0.69 M, tok_emb 0.15 M,
    # tok_emb_token 0.30 M
    assert sum(counts[n] for n in ("context_blocks", "context_norm")) == pytest.approx(7.09e6, rel=2e-3)
    assert sum(counts[n] for n in ("denoising_blocks", "output_norm")) == pytest.approx(13.00e6, rel=2e-3)
    assert counts["sigma_embedding"] == pytest.approx(0.59e6, rel=1e-2)
    assert counts["goal_proj"] == pytest.approx(0.69e6, rel=1e-2)
    assert counts["video_proj"] == 384 * 384 + 384
    assert counts["latent_action_proj"] == 768 * 384 + 384
    assert sum(p.numel() for p in head.parameters()) == pytest.approx(21.82e6, rel=1e-3)


def test_shapes_and_decoder_only_reads_context_prefix():
    head = small_head().eval()
    context = head.encode_context(*inputs())
    assert context.shape == (2, 13, 32)
    x = torch.randn(2, 10, 7)
    c_noise = torch.full((2,), 0.1)
    out = head.denoiser_output(x, c_noise, context)
    assert out.shape == (2, 10, 7)
    # Action token i may read context tokens 0..i only: changing token 5 leaves tokens 0..4 unchanged.
    changed = context.clone()
    changed[:, 5] += 1.0
    out2 = head.denoiser_output(x, c_noise, changed)
    torch.testing.assert_close(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])
    # Causal self-attention: changing action 7 leaves outputs 0..6 unchanged.
    x2 = x.clone()
    x2[:, 7] += 1.0
    torch.testing.assert_close(head.denoiser_output(x2, c_noise, context)[:, :7], out[:, :7])


def test_adaln_is_shift_plus_x_times_scale():
    block = small_head().denoising_blocks[0].eval()
    x, context = torch.randn(1, 10, 32), torch.randn(1, 13, 32)
    torch.nn.init.zeros_(block.modulation.weight)
    torch.nn.init.zeros_(block.modulation.bias)
    # Official: scale = gate = 0 -> self-attention and MLP branches vanish; only cross-attention remains.
    expected = x + block.cross_attention(block.norm_cross_attention(x), context, mask=None)
    out = block(x, torch.randn(1, 1, 32), context, torch.ones(10, 10, dtype=torch.bool).tril(), None)
    torch.testing.assert_close(out, expected)


def test_loss_matches_explicit_edm_objective():
    head = small_head().eval()
    goal, video, latent = inputs()
    context = head.encode_context(goal, video, latent)
    actions = torch.rand(2, 10, 7) * 2 - 1
    loss = head.loss(actions, context, generator=torch.Generator().manual_seed(3))
    # Re-draw the same sigma and noise and compute the weighted denoising loss by hand.
    g = torch.Generator().manual_seed(3)
    from lerobot_defi.models.edm import sample_log_logistic_sigmas

    cfg = head.cfg
    sigma = sample_log_logistic_sigmas(
        2, cfg.sigma_density_loc, cfg.sigma_density_scale, cfg.sigma_min_train, cfg.sigma_max, generator=g
    )
    noise = torch.randn(actions.shape, generator=g)
    noisy = actions + sigma[:, None, None] * noise
    denoised = head.denoise(noisy, sigma, context)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    expected = (weight[:, None, None] * (denoised - actions) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    # Padded steps do not count.
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[:, 5:] = True
    padded = actions.clone()
    padded[:, 5:] = 100.0
    loss_masked = head.loss(padded, context, pad, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(loss_masked) and loss_masked < 1e3


def test_sampling_computes_context_once_and_runs_ten_solver_steps():
    head = small_head().eval()
    context_calls, decoder_calls = [], []
    head.context_norm.register_forward_hook(lambda *a: context_calls.append(1))
    head.output_norm.register_forward_hook(lambda *a: decoder_calls.append(1))
    context = head.encode_context(*inputs())
    chunk = head.sample(context, noise=torch.randn(2, 10, 7))
    assert chunk.shape == (2, 10, 7)
    assert len(context_calls) == 1 and len(decoder_calls) == 10
    # Deterministic given the noise.
    torch.testing.assert_close(
        head.sample(context, noise=torch.zeros(2, 10, 7)), head.sample(context, noise=torch.zeros(2, 10, 7))
    )


def test_c_noise_embedding_uses_quarter_log_sigma():
    head = small_head().eval()
    context = head.encode_context(*inputs())
    x, sigma = torch.randn(2, 10, 7), torch.tensor([0.7, 3.0])
    c_skip, c_out, c_in, _ = edm_scalings(sigma[:, None, None], 0.5)
    manual = c_skip * x + c_out * head.denoiser_output(c_in * x, torch.log(sigma) / 4, context)
    torch.testing.assert_close(head.denoise(x, sigma, context), manual)
