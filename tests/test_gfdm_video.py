"""The GFDM as a video model (docs/method.md §2.5–§2.8): the v-objective against diffusers' SVD scheduler
convention, the CFG-ramp sampler, and the pipeline's CLIP text context."""

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from gfdm_test_data import TINY, tiny_models

from lerobot_defi.models.edm import edm_training_target, v_prediction_scalings
from lerobot_defi.models.gfdm_video import (
    SVD_SCHEDULER_CONFIG,
    GFDMVideoPipeline,
    frame_guidance_scales,
    gfdm_v_objective_loss,
    sample_gfdm_video,
)
from lerobot_defi.models.text import load_clip_text


def test_v_objective_matches_svd_scheduler_convention():
    unet, _ = tiny_models()
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 4, 4, 8, 8, generator=generator)
    condition = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 20, 64, generator=generator)
    ids = torch.tensor([[7.0, 127.0, 0.0]] * 2)
    noise = torch.randn(clean.shape, generator=generator)
    for index in (2, 6):
        sigma = scheduler.sigmas[index]
        with torch.no_grad():
            loss = gfdm_v_objective_loss(unet, clean, condition, context, ids, sigma.repeat(2), noise)
            noisy = clean + sigma * noise
            # the scheduler's own input scaling and continuous timestep (c_noise = ln(sigma) / 4)
            scheduler._step_index = index
            model_in = torch.cat(
                [
                    scheduler.scale_model_input(noisy, scheduler.timesteps[index]),
                    condition[:, None].expand(-1, 4, -1, -1, -1),
                ],
                2,
            )
            assert scheduler.timesteps[index].item() == pytest.approx(math.log(sigma.item()) / 4, rel=1e-5)
            output = unet(model_in, scheduler.timesteps[index].repeat(2), context, ids).sample
            scheduler._step_index = index
            denoised = scheduler.step(output, scheduler.timesteps[index], noisy).pred_original_sample
        expected = ((sigma**2 + 1) / sigma**2 * (denoised - clean) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
        # = the EDM-weighted loss with sigma_data = 1 written as a regression of F on its target (c_out < 0)
        target = edm_training_target(clean, noisy, sigma.repeat(2), sigma_data=1.0)
        torch.testing.assert_close(loss, ((output + target) ** 2).flatten(1).mean(1), rtol=1e-4, atol=1e-6)


def test_sampler_one_step_is_the_denoised_estimate_and_guidance_ramps_over_frames():
    unet, _ = tiny_models()
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    generator = torch.Generator().manual_seed(1)
    condition = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 20, 64, generator=generator)

    def run(**kwargs):
        return sample_gfdm_video(
            unet,
            scheduler,
            condition,
            context,
            num_frames=4,
            num_steps=1,
            generator=torch.Generator().manual_seed(7),
            **kwargs,
        )

    plain = run(guidance_min=1.0, guidance_max=1.0)
    x_t = (
        torch.randn((2, 4, 4, 8, 8), generator=torch.Generator().manual_seed(7)) * scheduler.init_noise_sigma
    )
    sigma = torch.tensor(700.0)
    c_skip, c_out, c_in, c_noise = v_prediction_scalings(sigma)
    with torch.no_grad():
        model_in = torch.cat([c_in * x_t, condition[:, None].expand(-1, 4, -1, -1, -1)], 2)
        output = unet(model_in, c_noise.repeat(2), context, torch.tensor([[7.0, 127.0, 0.0]] * 2)).sample
    # one Euler step from sigma_max to 0 returns D(x_T; 700) (float32 rounding of x_T ~ 700: atol 1e-3)
    torch.testing.assert_close(plain, c_skip * x_t + c_out * output, rtol=1e-3, atol=1e-3)

    guided = run(guidance_min=1.0, guidance_max=7.5)
    torch.testing.assert_close(guided[:, 0], plain[:, 0], rtol=1e-3, atol=1e-3)  # scale 1.0 on frame 0
    assert (guided[:, 1:] - plain[:, 1:]).abs().mean() > 1e-3
    torch.testing.assert_close(
        frame_guidance_scales(4, 1.0, 7.5).flatten(), torch.tensor([1.0, 19 / 6, 16 / 3, 7.5])
    )


def test_video_pipeline_text_context_uses_the_attention_mask():
    """Stage 1 (train_svd.py / eval_svd.py) passes the tokenizer's ids and mask to the CLIP text model."""
    unet, vae = tiny_models()
    clip, tokenizer, _ = load_clip_text(None, TINY["model"]["clip_text_config"])
    pipe = GFDMVideoPipeline(unet, vae, EulerDiscreteScheduler(), clip.eval(), tokenizer)
    texts = ["lift", "open the drawer"]
    ids = tokenizer(texts, padding="max_length", max_length=20, return_tensors="pt").input_ids
    mask = (torch.arange(20)[None] < torch.tensor([[6], [17]])).long()  # start + bytes + end
    with torch.no_grad():
        hidden = clip(input_ids=ids, attention_mask=mask).last_hidden_state
        unmasked = clip(input_ids=ids).last_hidden_state
    context = pipe.text_context(texts)
    torch.testing.assert_close(context, torch.cat([hidden, hidden], dim=-1))
    assert (context[..., :32] - unmasked).abs().amax() > 1e-2
