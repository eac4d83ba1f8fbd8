"""The settings that make DeFI fit when trained from scratch (docs/training.md#s4): the random GFDM's latent spread,
initialisations, several noise draws per chunk, the warm-up, the GIDM's own rate, codebook restarts, the fit
report. None of them changes what given weights compute."""

import json

import pytest
import torch
from defi_test_utils import tiny_batch, tiny_config

from lerobot_defi.models.action_head import ActionHead, ActionHeadConfig
from lerobot_defi.models.codebook_stats import code_counts
from lerobot_defi.models.edm import sample_log_logistic_sigmas
from lerobot_defi.models.gfdm import GFDMFeatureExtractor
from lerobot_defi.models.gidm import VectorQuantizer
from lerobot_defi.models.latent_spread import calibration_images
from lerobot_defi.models.video_former import VideoFormer, VideoFormerConfig
from lerobot_defi.policy.codebook_restart import CodebookRestarts
from lerobot_defi.policy.configuration_defi import SVD_LATENT_STD, load_preset
from lerobot_defi.policy.fit_report import fit_report
from lerobot_defi.policy.modeling_defi import CODEBOOK_REPORT_FILE, DeFIPolicy


def test_random_gfdm_gets_the_latent_spread_of_svd():
    """A fresh VAE gives latents ~20x weaker than the GFDM's unit noise; the tiny policy's is calibrated to
    1 / 0.18215, also on images other than the calibration's."""
    config = load_preset("tiny")
    images = calibration_images(64, samples=6, seed=123)
    torch.manual_seed(0)
    plain = GFDMFeatureExtractor.from_configs(config.gfdm_unet_config, config.gfdm_vae_config)
    torch.manual_seed(0)
    calibrated = GFDMFeatureExtractor.from_configs(
        config.gfdm_unet_config, config.gfdm_vae_config, latent_std=SVD_LATENT_STD, image_size=64
    )
    assert plain.encode_condition(images).std() < 1.0
    assert calibrated.encode_condition(images).std().item() == pytest.approx(SVD_LATENT_STD, rel=0.25)
    # Only the mean half of quant_conv is scaled; everything else is the same random network.
    same = [k for k, v in plain.state_dict().items() if torch.equal(v, calibrated.state_dict()[k])]
    assert set(plain.state_dict()) - set(same) == {"vae.quant_conv.weight", "vae.quant_conv.bias"}
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config())
    assert policy.gfdm.encode_condition(images).std().item() == pytest.approx(SVD_LATENT_STD, rel=0.25)


def test_calibration_images_are_the_same_under_a_default_device():
    """A policy built under ``with torch.device("cuda")`` (bench_policy.py does) calibrates on the same images: the
    seeded CPU generator is not asked to fill a tensor on the default device."""
    on_cpu = calibration_images(16, samples=2, seed=3)
    with torch.device("meta"):  # any default device other than the CPU
        under_context = calibration_images(16, samples=2, seed=3)
    assert under_context.device == torch.device("cpu")
    assert torch.equal(under_context, on_cpu)


def test_saved_policy_reloads_its_calibrated_gfdm_unchanged(tmp_path):
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config())
    policy.save_pretrained(tmp_path)
    loaded = DeFIPolicy.from_pretrained(tmp_path)
    for key, value in policy.gfdm.state_dict().items():
        torch.testing.assert_close(loaded.gfdm.state_dict()[key], value, rtol=0, atol=0)


def test_initial_scales_of_queries_frame_embeddings_and_adaln():
    torch.manual_seed(0)
    former = VideoFormer(VideoFormerConfig(dim=64, depth=1, num_heads=2, head_dim=16), 32, num_frames=16)
    assert former.queries.std().item() == pytest.approx(0.02, rel=0.1)
    assert former.frame_embedding.std().item() == pytest.approx(0.02, rel=0.2)
    original = VideoFormer(VideoFormerConfig(dim=64, depth=1, num_heads=2, head_dim=16, init_std=1.0), 32, 16)
    assert original.queries.std().item() == pytest.approx(1.0, rel=0.1)

    def modulation_bias(cfg: ActionHeadConfig) -> list[torch.Tensor]:
        head = ActionHead(cfg, 7, 10, 16, 24, 20, context_length=13)
        return head.denoising_blocks[0].modulation.bias.detach().chunk(6)

    shift_1, scale_1, gate_1, shift_2, scale_2, gate_2 = modulation_bias(
        ActionHeadConfig(dim=32, num_heads=2)
    )
    assert all(torch.all(t == 1) for t in (scale_1, gate_1, scale_2, gate_2))
    assert all(torch.all(t == 0) for t in (shift_1, shift_2))
    zero = ActionHeadConfig(dim=32, num_heads=2, adaln_scale_init=0.0, adaln_gate_init=0.0)
    assert all(torch.all(t == 0) for t in modulation_bias(zero))  # the original's init

    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config())
    assert policy.gidm_frame_embedding.std().item() == pytest.approx(0.02, rel=0.5)
    torch.manual_seed(0)
    original = DeFIPolicy(tiny_config(gidm_frame_embedding_init_std=1.0))
    assert original.gidm_frame_embedding.std().item() > 0.5


def test_loss_with_several_noise_draws_is_the_mean_of_single_draw_losses():
    torch.manual_seed(0)
    head = ActionHead(
        ActionHeadConfig(dim=32, num_heads=2, encoder_layers=1, decoder_layers=1), 7, 10, 16, 24, 20, 13
    )
    head.eval()
    context = torch.randn(2, 13, 32)
    actions = torch.rand(2, 10, 7) * 2 - 1
    loss = head.loss(actions, context, generator=torch.Generator().manual_seed(3), noise_draws=3)
    per_sample = head.loss(
        actions, context, generator=torch.Generator().manual_seed(3), noise_draws=3, reduction="none"
    )
    # By hand: each chunk repeated 3 times in a row, one sigma and noise per copy.
    g = torch.Generator().manual_seed(3)
    cfg = head.cfg
    sigma = sample_log_logistic_sigmas(
        6, cfg.sigma_density_loc, cfg.sigma_density_scale, cfg.sigma_min_train, cfg.sigma_max, generator=g
    )
    repeated = actions.repeat_interleave(3, 0)
    noise = torch.randn(repeated.shape, generator=g)
    noisy = repeated + sigma[:, None, None] * noise
    denoised = head.denoise(noisy, sigma, context.repeat_interleave(3, 0))
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    errors = (weight[:, None, None] * (denoised - repeated) ** 2).flatten(1).mean(1).view(2, 3)
    torch.testing.assert_close(loss, errors.mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(per_sample, errors.mean(1), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="noise_draws"):
        head.loss(actions, context, noise_draws=0)


def test_policy_loss_uses_loss_noise_draws():
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config()).eval()
    batch = tiny_batch(policy.config)
    seen = []
    policy.action_head.sigma_embedding.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    policy.forward(batch)
    assert seen == [3 * policy.config.loss_noise_draws] and policy.config.loss_noise_draws == 8


def test_scheduler_preset_warms_up_the_constant_rate():
    config = tiny_config()
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.optimizer_lr)
    scheduler = config.get_scheduler_preset().build(optimizer, 1000)
    rates = []
    for _ in range(config.lr_warmup_steps + 5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[config.lr_warmup_steps // 2] == pytest.approx(config.optimizer_lr / 2)
    assert rates[-1] == pytest.approx(config.optimizer_lr)
    assert tiny_config(lr_warmup_steps=0).get_scheduler_preset() is None  # the original: constant
    assert (
        type(tiny_config(lr_schedule="tristage").get_scheduler_preset()).__name__ == "TriStageSchedulerConfig"
    )


def test_gidm_lr_gives_the_gidm_encoder_its_own_parameter_group():
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config(gidm_lr=1e-4))
    groups = policy.get_optim_params()
    assert [g.get("lr") for g in groups] == [None, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in policy.gidm.parameters()}
    everything = [p for p in policy.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(everything)
    optimizer = torch.optim.AdamW(groups, lr=policy.config.optimizer_lr)
    assert [g["lr"] for g in optimizer.param_groups] == [policy.config.optimizer_lr, 1e-4]
    plain = DeFIPolicy(tiny_config())
    assert all(isinstance(p, torch.nn.Parameter) for p in plain.get_optim_params())


def test_restart_puts_dead_codes_on_encoder_outputs_and_keeps_used_ones():
    quantizer = VectorQuantizer(4, 3)
    before = quantizer.codebook.weight.detach().clone()
    latents = torch.arange(15, dtype=torch.float32).view(5, 3)
    counts = torch.tensor([2, 0, 5, 0])
    assert quantizer.restart_dead_codes(counts, latents, torch.Generator().manual_seed(0)) == 2
    after = quantizer.codebook.weight.detach()
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    for code in after[[1, 3]]:
        assert any(torch.equal(code, row) for row in latents)


def test_codebook_restarts_every_n_steps_and_summary():
    quantizer = VectorQuantizer(8, 2)
    restarts = CodebookRestarts(8, every_steps=3)
    latents = torch.randn(4, 2, 2) * 5
    for step in range(1, 7):
        restarts.observe(code_counts(torch.tensor([[0, 1], [0, 1], [1, 0], [0, 0]]), 8), latents)
        restarted = restarts.step(quantizer)
        assert restarted == (6 if step % 3 == 0 else 0)
    summary = restarts.summary()
    assert summary["steps"] == 6 and summary["codes_restarted"] == 12
    assert summary["code_counts"][:2] == [30, 18] and summary["codebook_usage"] == 0.25
    never = CodebookRestarts(8, every_steps=0)
    never.observe(code_counts(torch.zeros(1, 2, dtype=torch.long), 8), latents)
    assert never.step(quantizer) == 0


def test_lerobot_train_update_restarts_codes_and_the_checkpoint_records_them(tmp_path):
    """``update()`` after each optimizer step (as lerobot-train calls it); a trained policy saves what happened to
    its codebook beside the weights."""
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config(gidm_code_restart_steps=2)).train()
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-3)
    for step in range(4):
        loss, _ = policy.forward(tiny_batch(policy.config, seed=step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        policy.update()
    assert policy.codebook_restarts.steps == 4 and policy.codebook_restarts.restarted > 0
    policy.save_pretrained(tmp_path)
    report = json.loads((tmp_path / CODEBOOK_REPORT_FILE).read_text())
    assert report["steps"] == 4 and sum(report["code_counts"]) == 4 * 3 * 4
    untrained = tmp_path / "untrained"
    DeFIPolicy(tiny_config()).save_pretrained(untrained)
    assert not (untrained / CODEBOOK_REPORT_FILE).exists()


def test_codebook_restarts_with_torch_distributed(tmp_path):
    """The distributed path (counts summed, rank 0's codebook broadcast) in a one-process gloo group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        quantizer = VectorQuantizer(4, 2)
        restarts = CodebookRestarts(4, every_steps=1)
        restarts.observe(code_counts(torch.tensor([[0, 0]]), 4), torch.ones(1, 2, 2))
        assert restarts.step(quantizer) == 3
        torch.testing.assert_close(quantizer.codebook.weight[1:], torch.ones(3, 2))
    finally:
        dist.destroy_process_group()


def test_fit_report_numbers(tmp_path):
    """Error against the mean action on the given frames, gripper sign agreement, context spread, codes."""
    from lerobot_defi.policy.processor_defi import make_defi_pre_post_processors

    torch.manual_seed(0)
    config = tiny_config(binarize_gripper=True)
    policy = DeFIPolicy(config)
    pre, post = make_defi_pre_post_processors(policy.config, dataset_stats=None)
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(5):
        action = torch.rand(10, 7, generator=generator) * 2 - 1
        action[:, -1] = 1.0 if i % 2 else -1.0
        pad = torch.zeros(10, dtype=torch.bool)
        pad[8:] = i == 4
        items.append(
            {
                "observation.images.static": torch.rand(3, 200, 200, generator=generator),
                "observation.images.gripper": torch.rand(3, 84, 84, generator=generator),
                "action": action,
                "action_is_pad": pad,
                "task": "open the drawer",
            }
        )
    report = fit_report(policy, pre, post, items, seed=0, batch_size=2)
    again = fit_report(policy, pre, post, items, seed=0, batch_size=2)
    assert report == again  # seeded
    assert report.frames == 5 and len(report.codes_per_slot) == config.gidm.num_latent_tokens
    assert report.ratio == pytest.approx(report.open_loop_error / report.mean_action_error)
    assert 0 <= report.gripper_agreement <= 1 and report.context_frame_spread > 0
    assert policy.config.feature_noise_seed is None  # restored
    # The baseline by hand: mean first action of the frames vs every valid recorded step, arm channels only.
    recorded = torch.stack([item["action"] for item in items])[..., :6]
    valid = ~torch.stack([item["action_is_pad"] for item in items])
    baseline = (recorded[:, 0].mean(0) - recorded).abs()[valid].mean()
    assert report.mean_action_error == pytest.approx(baseline.item(), rel=1e-5)
