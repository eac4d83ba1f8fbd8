"""DeFIPolicy: official sizes, training step, action queue, save/load, processors, bad input
(docs/method.md §4, §5, §9)."""

import json

import pytest
import torch
from defi_test_utils import CALVIN_CAMERAS, tiny_batch, tiny_config
from lerobot.configs.types import FeatureType, PolicyFeature

from lerobot_defi.models.reference_architectures import official_random_config_overrides
from lerobot_defi.policy.configuration_defi import DeFIConfig
from lerobot_defi.policy.modeling_defi import CheckpointMismatchError, DeFIPolicy
from lerobot_defi.policy.processor_defi import DeFIImageProcessorStep, make_defi_pre_post_processors


def test_official_size_policy_trainable_parameters(tmp_path):
    """The whole official-size policy: frozen parts as meta skeletons, trainable parts real
    (docs/method.md §6.1)."""
    config = DeFIConfig(device="cpu", **official_random_config_overrides())
    config.input_features = {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in CALVIN_CAMERAS.items()}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (7,))}
    policy = DeFIPolicy(config, pretrained_dir=tmp_path)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(policy.video_former) == pytest.approx(17.71e6, rel=1e-3)
    assert count(policy.gidm_feature_proj) + policy.gidm_frame_embedding.numel() == pytest.approx(
        2.56e6, rel=1e-3
    )
    assert count(policy.gidm) == pytest.approx(114.75e6, rel=1e-3)
    assert count(policy.action_head) == pytest.approx(21.82e6, rel=1e-3)
    trainable = sum(p.numel() for p in policy.get_optim_params())
    assert trainable == pytest.approx(156.8e6, rel=1e-3)
    assert policy.action_head.cross_attention_mask.shape == (10, 229)
    assert config.gidm.num_patches == 256 and config.gidm.text_dim == 768
    assert count(policy.gfdm.unet) == pytest.approx(1355.6e6, rel=1e-4)
    assert all(not p.requires_grad for p in policy.gfdm.parameters())


def test_training_step_shapes_losses_and_gradients():
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config())
    batch = tiny_batch(policy.config)
    encoded = policy.encode_observation(batch)
    assert encoded["context"].shape == (3, 1 + 4 * 2 + 4, 32)
    assert encoded["indices"].shape == (3, 4)
    loss, info = policy.forward(batch)
    assert set(info) == {
        "action_loss",
        "vq_code_loss",
        "vq_commitment_loss",
        "codebook_usage",
        "codebook_perplexity",
    }
    assert loss.item() == pytest.approx(
        info["action_loss"] + info["vq_code_loss"] + 0.25 * info["vq_commitment_loss"], rel=1e-5
    )
    loss.backward()
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.split(".")[0]
        in {"gidm_feature_proj", "gidm_frame_embedding", "gidm", "video_former", "action_head"}
        for n in trainable
    )
    assert all(
        p.grad is not None for n, p in policy.named_parameters() if p.requires_grad and "quantizer" not in n
    )
    assert all(p.grad is None for p in policy.gfdm.parameters()) and all(
        p.grad is None for p in policy.text.parameters()
    )


def _seeded_forward(policy, batch, seed, **kwargs):
    torch.manual_seed(seed)  # the EDM noise levels, the action noise and the GFDM feature noise
    return policy.forward(batch, **kwargs)


def test_forward_reduction_none_gives_one_loss_per_sample():
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config()).train()
    batch = tiny_batch(policy.config, batch_size=3)
    per_sample, info = _seeded_forward(policy, batch, 1, reduction="none")
    assert per_sample.shape == (3,) and per_sample.std() > 0
    mean_loss, mean_info = _seeded_forward(policy, batch, 1)
    torch.testing.assert_close(per_sample.mean(), mean_loss)  # no padding: the mean is the scalar loss
    for key in ("action_loss", "vq_code_loss", "vq_commitment_loss"):
        assert info[key] == pytest.approx(mean_info[key], rel=1e-5)
    # A sample's loss depends on its own data only, and padded chunk steps count for nothing.
    changed = {**batch, "action": batch["action"].clone(), "action_is_pad": batch["action_is_pad"].clone()}
    changed["action"][0] += 0.5
    changed["action_is_pad"][2, 6:] = True
    changed_losses, _ = _seeded_forward(policy, changed, 1, reduction="none")
    assert changed_losses[0] != per_sample[0]
    torch.testing.assert_close(changed_losses[1], per_sample[1])
    changed["action"][2, 6:] = 9.0
    torch.testing.assert_close(_seeded_forward(policy, changed, 1, reduction="none")[0][2], changed_losses[2])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        policy.forward(batch, reduction="sum")


def test_lerobot_train_sample_weighting_reaches_the_loss():
    """lerobot-train's update_policy with a sample weighter calls forward(batch, reduction="none") and weights
    the per-sample losses: weight only sample 1 and the step's loss and gradient are sample 1's alone."""
    from accelerate import Accelerator
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker
    from lerobot.utils.sample_weighting import SampleWeighter

    class OnlySample(SampleWeighter):
        def __init__(self, index: int):
            self.index = index

        def compute_batch_weights(self, batch):
            weights = torch.zeros(len(batch["task"]))
            weights[self.index] = 1.0
            return weights, {"mean": weights.mean().item()}

        def get_stats(self):
            return {}

    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config()).train()
    batch = tiny_batch(policy.config, batch_size=3)
    per_sample, _ = _seeded_forward(policy, batch, 1, reduction="none")
    per_sample[1].backward()
    expected_grad_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in policy.get_optim_params() if p.grad is not None])
    )
    policy.zero_grad()

    metrics = {name: AverageMeter(name, ":.3f") for name in ("loss", "grad_norm", "lr", "update_s")}
    tracker = MetricsTracker(batch_size=3, num_frames=30, num_episodes=1, metrics=metrics)
    optimizer = torch.optim.SGD(policy.get_optim_params(), lr=0.0)
    torch.manual_seed(1)
    tracker, output = update_policy(
        tracker, policy, batch, optimizer, 0.0, Accelerator(cpu=True), sample_weighter=OnlySample(1)
    )
    assert tracker.loss.val == pytest.approx(per_sample[1].item(), rel=1e-5)
    assert tracker.loss.val != pytest.approx(per_sample.mean().item(), rel=1e-3)
    assert tracker.grad_norm.val == pytest.approx(expected_grad_norm.item(), rel=1e-4)
    assert output["sample_weight_mean"] == pytest.approx(1 / 3)


def test_gidm_camera_and_frames_are_configurable():
    torch.manual_seed(0)
    config = tiny_config(
        gidm_camera="observation.images.gripper",
        gidm_frame_indices=(1, 3),
        video_former_cameras=["observation.images.static"],
    )
    policy = DeFIPolicy(config)
    seen = {}

    def record(name, output=False):
        def hook(module, args, out):
            seen[name] = out if output else args[0]

        return hook

    policy.gidm_feature_proj.register_forward_hook(record("gidm_in"))
    policy.video_former.register_forward_hook(record("video_in"))
    policy.gfdm.register_forward_hook(record("features", output=True))
    policy.encode_observation(tiny_batch(config))
    features = seen["features"]  # (V*B, F, C, h, w) with cameras in camera order: static, gripper
    b = 3
    gripper = features[b:].flatten(3).transpose(2, 3)  # (B, F, N, C)
    torch.testing.assert_close(seen["gidm_in"], gripper[:, [1, 3]])
    static = features[:b].flatten(3).transpose(2, 3)
    torch.testing.assert_close(seen["video_in"], static)


def test_select_action_queue_and_instruction_change_flushes():
    torch.manual_seed(0)
    policy = DeFIPolicy(tiny_config(n_action_steps=4)).eval()
    calls = []
    policy.action_head.context_norm.register_forward_hook(lambda *a: calls.append(1))
    batch = tiny_batch(policy.config, batch_size=1, tasks=["open the drawer"])
    actions = [policy.select_action(batch) for _ in range(5)]
    assert actions[0].shape == (1, 7)
    assert len(calls) == 2  # chunk of 4 executed, then a new chunk
    policy.select_action(tiny_batch(policy.config, batch_size=1, tasks=["close the drawer"]))
    assert len(calls) == 3  # a new instruction flushes the queue
    policy.reset()
    policy.select_action(tiny_batch(policy.config, batch_size=1, tasks=["close the drawer"]))
    assert len(calls) == 4


def test_save_load_gives_identical_actions(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(feature_noise_seed=7)
    policy = DeFIPolicy(config).eval()
    batch = tiny_batch(config, batch_size=2)
    noise = torch.randn(2, config.chunk_size, config.action_dim)
    before = policy.predict_action_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path / "policy")
    saved = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert saved["type"] == "defi" and saved["gfdm_unet_config"]["block_out_channels"] == [32, 32, 64, 64]
    loaded = DeFIPolicy.from_pretrained(tmp_path / "policy")
    assert loaded.text.clip_tokenizer("open").input_ids == policy.text.clip_tokenizer("open").input_ids
    after = loaded.predict_action_chunk(batch, noise=noise)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    # Loaded weights own 64-byte aligned memory (views into the mapped file would make BLAS round differently).
    unaligned = [name for name, p in loaded.named_parameters() if p.data_ptr() % 64]
    assert unaligned == []


def test_checkpoint_from_another_config_fails_with_a_message(tmp_path):
    torch.manual_seed(0)
    DeFIPolicy(tiny_config(action_dim=7)).save_pretrained(tmp_path / "seven")
    other = tiny_config(action_dim=2, binarize_gripper=False)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"action_head.action_in.weight: checkpoint \(32, 7\) vs this policy \(32, 2\)",
    ):
        DeFIPolicy.from_pretrained(tmp_path / "seven", config=other)


def test_bad_input_names_what_is_missing():
    with pytest.raises(ValueError, match="at least one camera"):
        DeFIPolicy(tiny_config(cameras={}))
    with pytest.raises(ValueError, match=r"gidm_camera names camera\(s\) \['observation.images.left'\]"):
        DeFIPolicy(tiny_config(gidm_camera="observation.images.left"))
    with pytest.raises(ValueError, match="gripper_action_index"):
        DeFIPolicy(tiny_config(action_dim=1, gripper_action_index=3, binarize_gripper=True))
    policy = DeFIPolicy(tiny_config())
    batch = tiny_batch(policy.config)
    del batch["task"]
    with pytest.raises(KeyError, match="instruction under 'task'"):
        policy.forward(batch)
    with pytest.raises(ValueError, match="gidm_frame_indices"):
        tiny_config(gidm_frame_indices=(0, 9))


def test_images_are_resized_as_uint8_images_like_the_original():
    """The original's transform (docs/method.md §4.2): torchvision ``Resize(size, antialias=True)`` on the uint8
    image, then ``float / 255`` and ``Normalize(0.5, 0.5)``; LeRobot hands the processor those uint8 images / 255."""
    from torchvision import transforms

    def original(dtype):
        return transforms.Compose(
            [
                transforms.Resize(64, antialias=True),
                transforms.Lambda(lambda image: image.to(dtype).div(255)),
                transforms.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )

    generator = torch.Generator().manual_seed(0)
    images = {
        key: torch.randint(0, 256, (2, *shape), generator=generator, dtype=torch.uint8)
        for key, shape in CALVIN_CAMERAS.items()
    }
    step = DeFIImageProcessorStep(image_keys=list(CALVIN_CAMERAS), size=64)
    for dtype in (torch.float32, torch.float64):
        out = step.observation({key: image.to(dtype) / 255 for key, image in images.items()})
        for key, image in images.items():
            assert out[key].dtype == dtype
            torch.testing.assert_close(out[key], original(dtype)(image), rtol=0, atol=1e-12)
    # Resizing the float image instead differs by up to a pixel level (2/255 on [-1, 1]).
    key = "observation.images.static"
    resized_floats = torch.nn.functional.interpolate(
        images[key].float() / 255, size=(64, 64), mode="bilinear", antialias=True
    )
    assert (resized_floats * 2 - 1 - original(torch.float32)(images[key])).abs().amax() > 1 / 255


def test_processors_resize_to_minus_one_one_and_binarize_gripper(tmp_path):
    config = tiny_config(binarize_gripper=True)
    stats = {
        "action": {
            "min": torch.full((7,), -2.0),
            "max": torch.full((7,), 2.0),
            "mean": torch.zeros(7),
            "std": torch.ones(7),
        }
    }
    pre, post = make_defi_pre_post_processors(config, dataset_stats=stats)
    pre.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "policy_preprocessor.json").read_text())
    names = [step.get("registry_name") for step in saved["steps"]]
    assert names == [
        "rename_observations_processor",
        "to_batch_processor",
        "device_processor",
        "normalizer_processor",
        "defi_image_processor",
    ]
    obs = {
        "observation.images.static": torch.ones(3, 200, 200),
        "observation.images.gripper": torch.zeros(3, 84, 84),
        "task": "open the drawer",
    }
    out = pre(obs)
    assert out["observation.images.static"].shape == (1, 3, 64, 64)
    assert torch.allclose(out["observation.images.static"], torch.ones(1)) and torch.allclose(
        out["observation.images.gripper"], -torch.ones(1)
    )
    action = post(torch.tensor([[0.5, -0.5, 0.0, 0.1, 0.2, 0.3, 0.2]]))
    torch.testing.assert_close(
        action[0, :6], torch.tensor([1.0, -1.0, 0.0, 0.2, 0.4, 0.6])
    )  # min-max [-2, 2]
    assert action[0, 6].item() == 1.0
    assert post(torch.tensor([[0.0] * 6 + [-0.3]]))[0, 6].item() == -1.0


def _action_stats(last_channel: list[float]) -> dict:
    """LeRobot-style action statistics of a dataset: 6 continuous channels in [-1, 1] and the given last one."""
    values = torch.cat(
        [
            torch.linspace(-1, 1, len(last_channel))[:, None].expand(-1, 6),
            torch.tensor(last_channel)[:, None],
        ],
        1,
    )
    stats = {
        "min": values.min(0).values,
        "max": values.max(0).values,
        "mean": values.mean(0),
        "std": values.std(0, correction=0),
    }
    return {"action": {k: v.numpy() for k, v in stats.items()}}


@pytest.mark.parametrize(
    ("last_channel", "expected"),
    [
        ([-1.0, 1.0, 1.0, -1.0, 1.0], True),  # CALVIN-like: exactly -1 / +1
        (
            [-1.0, -0.2, 0.4, 1.0, 1.0],
            False,
        ),  # a continuous gripper position (SO-100/101) reaching its limits
        ([0.0, 1.0, 1.0, 0.0, 1.0], False),  # 0/1 gripper: binarising by sign would send -1
        ([1.0, 1.0, 1.0], False),  # constant: nothing tells it is a gripper
    ],
)
def test_binarize_gripper_default_is_decided_from_the_training_data(tmp_path, last_channel, expected):
    """The generic default is safe: the gripper is binarised only when the dataset's channel is -1/+1, and the
    decision is saved with the policy (lerobot-train makes the processors with the dataset's stats)."""
    assert DeFIConfig().binarize_gripper is None
    config = tiny_config()
    _, post = make_defi_pre_post_processors(config, dataset_stats=_action_stats(last_channel))
    assert config.binarize_gripper is expected
    steps = [type(step).__name__ for step in post.steps]
    assert ("BinarizeGripperProcessorStep" in steps) is expected
    DeFIPolicy(config).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["binarize_gripper"] is expected


def test_binarize_gripper_without_data_is_off_and_explicit_settings_win():
    hand = tiny_config(action_dim=19)  # a robot hand: the last channel is a finger joint
    _, post = make_defi_pre_post_processors(hand)
    assert hand.binarize_gripper is None and all(
        type(step).__name__ != "BinarizeGripperProcessorStep" for step in post.steps
    )
    assert post(torch.full((1, 19), 0.3))[0, -1].item() == pytest.approx(0.3)
    forced = tiny_config(binarize_gripper=False)
    make_defi_pre_post_processors(forced, dataset_stats=_action_stats([-1.0, 1.0, -1.0]))
    assert forced.binarize_gripper is False
    assert DeFIConfig.__dataclass_fields__["binarize_gripper"].default is None


def test_calvin_recipe_and_authors_weights_keep_binarizing():
    from lerobot_defi.official.policy import official_calvin_config
    from lerobot_defi.policy.configuration_defi import load_preset

    assert load_preset("calvin").binarize_gripper is True
    assert official_calvin_config().binarize_gripper is True
    assert official_calvin_config(binarize_gripper=False).binarize_gripper is False


def test_construction_leaves_its_config_alone_and_saves_it_with_the_resolved_fields(tmp_path):
    """The policy runs with and saves the given config plus the fields its pretrained parts resolve; the given
    config is not changed. A run's own config (what ``lerobot-train --resume`` passes) loads the saved policy."""
    import copy
    import dataclasses

    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from lerobot_defi.models.gidm import LatentActionModel
    from lerobot_defi.policy.pretrained_parts import RESOLVED_FIELDS

    preset = tiny_config()
    UNetSpatioTemporalConditionModel.from_config(preset.gfdm_unet_config).save_pretrained(
        tmp_path / "gfdm" / "unet"
    )
    AutoencoderKLTemporalDecoder.from_config(preset.gfdm_vae_config).save_pretrained(
        tmp_path / "gfdm" / "vae"
    )
    resolved_gidm = DeFIPolicy(preset).config.gidm
    torch.manual_seed(0)
    LatentActionModel(dataclasses.replace(resolved_gidm, encoder_blocks=2)).save_pretrained(tmp_path / "gidm")
    given = tiny_config(
        gfdm_path=str(tmp_path / "gfdm"),
        gfdm_unet_config=None,
        gfdm_vae_config=None,
        gidm_path=str(tmp_path / "gidm"),
        gidm=dataclasses.replace(preset.gidm, num_patches=1, text_dim=1, tiled_padding_mask=False),
        feature_noise_seed=3,
    )
    before = copy.deepcopy(given)

    policy = DeFIPolicy(given, dataset_stats=_action_stats([-1.0, 1.0, -1.0])).eval()

    assert given == before and policy.config is not given
    changed = {
        f.name
        for f in dataclasses.fields(DeFIConfig)
        if getattr(policy.config, f.name) != getattr(given, f.name)
    }
    assert changed == set(RESOLVED_FIELDS)
    assert policy.config.gfdm_unet_config["block_out_channels"] == [32, 32, 64, 64]
    assert policy.config.gidm == dataclasses.replace(
        resolved_gidm, encoder_blocks=2, tiled_padding_mask=False
    )
    assert policy.config.binarize_gripper is True  # decided from the statistics, as the processors decide it
    policy.save_pretrained(tmp_path / "policy")
    saved = json.loads((tmp_path / "policy" / "config.json").read_text())
    assert saved["gidm"]["encoder_blocks"] == 2 and saved["gfdm_vae_config"] is not None

    batch = tiny_batch(policy.config, batch_size=2)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.action_dim)
    expected = policy.predict_action_chunk(batch, noise=noise)
    for config in (None, before):  # the saved config.json; the run's own config (lerobot-train --resume)
        loaded = DeFIPolicy.from_pretrained(tmp_path / "policy", config=copy.deepcopy(config))
        torch.testing.assert_close(loaded.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=0)
