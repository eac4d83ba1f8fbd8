"""GFDM pretraining (docs/method.md §2): clip sampling, the latent cache and the VPP ``.pt`` layout, bad input,
and ``lerobot-defi-train-gfdm`` end to end on real CALVIN / VPP frames with the tiny preset (loss, resume,
export -> policy, model card, 2 processes). The objective, sampler and pipeline: ``test_gfdm_video.py``; the
mixture sampler: ``test_mixture.py``."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from defi_test_utils import REPO_DIR
from gfdm_test_data import (
    TINY,
    VPP_SLICE,
    calvin_training_dir,
    make_calvin_dataset,
    make_synthetic_dataset,
    make_vpp_video_dataset,
    read_video,
    tiny_models,
)
from lerobot_defi.conversions.vpp_format import latent_file

from lerobot_defi.models.gfdm import GFDMFeatureExtractor
from lerobot_defi.models.gfdm_video import GFDMVideoPipeline, encode_video_latents, gfdm_v_objective_loss
from lerobot_defi.pretrain.gfdm.clip_dataset import GFDMClipDataset, build_clip_datasets
from lerobot_defi.pretrain.gfdm.clips import GFDMDatasetConfig, episode_clips, evenly_spaced_indices
from lerobot_defi.pretrain.gfdm.config import TrainGFDMConfig
from lerobot_defi.pretrain.gfdm.latent_cache import encode_missing_latents
from lerobot_defi.pretrain.gfdm.latent_files import save_latents_atomically
from lerobot_defi.pretrain.gfdm.lerobot_source import (
    LeRobotClipSource,
    frames_to_model_range,
    resize_frames_uint8,
)
from lerobot_defi.pretrain.gfdm.parts import check_svd_init_folder
from lerobot_defi.pretrain.gfdm.vpp_source import VPPLatentSource
from lerobot_defi.pretrain.shared.cli import parse_config
from lerobot_defi.pretrain.shared.mixture import MixtureDataset
from lerobot_defi.pretrain.train_gfdm import train

BIN = Path(sys.executable).parent
needs_calvin = pytest.mark.skipif(
    calvin_training_dir() is None,
    reason="no CALVIN frames: tests/data/calvin_mini_slice (or shared/data/calvin_mini) is absent",
)


# ----------------------------------------------------------------------------------------------------------------
# fixtures: small real LeRobotDatasets, built once per module
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calvin_dataset(tmp_path_factory):
    if calvin_training_dir() is None:
        pytest.skip("no CALVIN frames: tests/data/calvin_mini_slice (or shared/data/calvin_mini) is absent")
    return make_calvin_dataset(tmp_path_factory.mktemp("calvin") / "calvin")


@pytest.fixture(scope="module")
def vpp_video_datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("vpp")
    return {name: make_vpp_video_dataset(base / name, name, f"local/{name}") for name in ("bridge", "rt1")}


def calvin_entry(root, **extra) -> dict:
    return {
        "repo_id": "local/calvin_gfdm",
        "root": str(root),
        "cameras": ["static", "gripper"],
        "camera_weights": [0.75, 0.25],
        **extra,
    }


def tiny_config(output_dir, datasets: list[dict], *flags: str) -> TrainGFDMConfig:
    args = [
        "--config_path=gfdm_tiny.yaml",
        f"--output_dir={output_dir}",
        f"--datasets={json.dumps(datasets)}",
    ]
    return parse_config(TrainGFDMConfig, [*args, *flags])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# clips and sampling
# ----------------------------------------------------------------------------------------------------------------
def test_clip_indices_follow_the_official_rules():
    stride = GFDMDatasetConfig(repo_id="x", frame_stride=2)
    clips = [c.tolist() for c in episode_clips(stride, length=10, num_frames=4)]
    # starts every 2 frames over the whole episode, indices clamped to the last frame (docs/method.md §2.3)
    assert clips == [[0, 2, 4, 6], [2, 4, 6, 8], [4, 6, 8, 9], [6, 8, 9, 9], [8, 9, 9, 9]]
    strict = GFDMDatasetConfig(repo_id="x", frame_stride=2, pad_short_clips=False)
    assert [c.tolist() for c in episode_clips(strict, 10, 4)] == [[0, 2, 4, 6], [2, 4, 6, 8]]
    every3 = GFDMDatasetConfig(repo_id="x", frame_stride=1, clip_start_every=3, pad_short_clips=False)
    assert [c[0] for c in episode_clips(every3, 10, 4)] == [0, 3, 6]

    even = GFDMDatasetConfig(repo_id="x", clip_mode="even", max_episode_frames=100)
    assert [c.tolist() for c in episode_clips(even, 24, 16)] == [
        np.floor(np.linspace(0, 23, 16)).astype(int).tolist()
    ]
    assert episode_clips(even, 101, 16) == []  # internet episodes longer than 100 frames are skipped
    assert evenly_spaced_indices(5, 4).tolist() == [0, 1, 2, 4]


@needs_calvin
def test_lerobot_clips_are_real_frames_with_their_instruction(calvin_dataset):
    root, episodes = calvin_dataset
    config = GFDMDatasetConfig(**calvin_entry(root), frame_stride=3)
    dataset = GFDMClipDataset(LeRobotClipSource(config, None), num_frames=4, image_size=64)
    # 3 episodes of 24 frames, starts every 3 frames -> 8 clips each
    assert len(dataset) == 24
    mixture = MixtureDataset([dataset])
    item = mixture[(9, 123)]
    again = mixture[(9, 123)]
    assert item["camera"] == again["camera"] and torch.equal(item["frames"], again["frames"])
    assert item["frames"].shape == (4, 3, 64, 64) and item["frames"].dtype == torch.uint8
    assert item["task"] == episodes[1][1] and item["source_index"] == 0
    # the decoded static frames are the recorded CALVIN frames (through AV1 compression and the resize)
    static_only = GFDMDatasetConfig(
        **calvin_entry(root, cameras=["static"], camera_weights=None), frame_stride=3
    )
    static = GFDMClipDataset(LeRobotClipSource(static_only, None), num_frames=4, image_size=64)[9]
    recorded = torch.from_numpy(episodes[1][0][dataset.clips[9].frames]).permute(0, 3, 1, 2).float() / 255
    difference = (static["frames"].float() - resize_frames_uint8(recorded, 64).float()).abs().mean()
    assert difference < 6.0, difference
    # camera choice follows camera_weights, reproducibly from the sampler's seed
    cameras = [dataset.sample(0, np.random.default_rng(s))["camera"] for s in range(400)]
    assert cameras.count("observation.images.static") / 400 == pytest.approx(0.75, abs=0.06)


@needs_calvin
def test_clip_frames_are_decoded_with_a_backend_found_once(calvin_dataset, monkeypatch):
    """With no video_backend set, every clip read passes the decoder LeRobot would pick, not None: None makes
    LeRobot probe for torchcodec again and, without it, log a warning per clip (48,000 lines in 1500 steps)."""
    import lerobot.datasets.video_utils as video_utils
    from lerobot_defi.conversions.video_backend import video_backend

    root, _ = calvin_dataset
    source = LeRobotClipSource(GFDMDatasetConfig(**calvin_entry(root), frame_stride=3), None)
    assert source.config.video_backend is None
    decode = video_utils.decode_video_frames
    backends = []

    def recording_decode(path, timestamps, tolerance_s, backend=None, *args, **kwargs):
        backends.append(backend)
        return decode(path, timestamps, tolerance_s, backend, *args, **kwargs)

    monkeypatch.setattr(video_utils, "decode_video_frames", recording_decode)
    frames = source.read_frames(0, "observation.images.static", np.arange(4))
    assert frames.shape[0] == 4
    assert backends == [video_backend()[0]]
    pinned = LeRobotClipSource(GFDMDatasetConfig(**calvin_entry(root), video_backend="pyav"), None)
    pinned.read_frames(0, "observation.images.static", np.arange(2))
    assert backends[-1] == "pyav"


def test_vpp_pt_latents_are_read_directly():
    config = GFDMDatasetConfig(
        repo_id="vpp/bridge", root=str(VPP_SLICE / "bridge"), format="vpp", split="val", clip_mode="even"
    )
    dataset = GFDMClipDataset(VPPLatentSource(config, "val"), num_frames=16, image_size=256)
    item = dataset[0]
    stored = torch.load(VPP_SLICE / "bridge" / "latent_videos_svd" / "val" / "10" / "0.pt", weights_only=True)
    assert stored.shape == (24, 4, 32, 32)
    torch.testing.assert_close(item["latents"], stored[np.floor(np.linspace(0, 23, 16)).astype(int)])
    assert item["task"] == json.loads((VPP_SLICE / "bridge/annotation/val/10.json").read_text())["texts"][0]
    with pytest.raises(ValueError, match=r"\(32, 32\) latents but image_size 64 needs \(8, 8\)"):
        GFDMClipDataset(VPPLatentSource(config, "val"), num_frames=16, image_size=64)[0]
    rt1 = GFDMDatasetConfig(repo_id="vpp/rt1", root=str(VPP_SLICE / "rt1"), format="vpp", split="val")
    with pytest.raises(FileNotFoundError, match=r"1 latent file\(s\) missing .*latent_videos/val/6/0.pt"):
        VPPLatentSource(rt1, "val")


@needs_calvin
def test_latent_cache_encodes_each_episode_once_with_the_vae(calvin_dataset, tmp_path):
    root, _ = calvin_dataset
    configs = [GFDMDatasetConfig(**calvin_entry(root, val_episodes=[2]))]
    train_sets, val_sets = build_clip_datasets(configs, 4, 64, tmp_path / "cache", latent_downsample=4)
    _, vae = tiny_models()
    written = encode_missing_latents(train_sets + val_sets, vae, sample_posterior=False, show_progress=False)
    assert written == 6  # 3 episodes x 2 cameras
    assert encode_missing_latents(train_sets + val_sets, vae, show_progress=False) == 0
    path = latent_file(tmp_path / "cache" / "local__calvin_gfdm", "observation.images.static", 1)
    cached = torch.load(path, weights_only=True)
    assert cached.shape == (24, 4, 16, 16) and cached.dtype == torch.float32  # tiny VAE: 64 px / 4
    frames = resize_frames_uint8(
        train_sets[0].source.read_frames(1, "observation.images.static", np.arange(24)), 64
    )
    expected = encode_video_latents(vae, frames_to_model_range(frames), sample_posterior=False)
    torch.testing.assert_close(cached, expected)
    # training items now come from the cache
    item = train_sets[0].sample(0, np.random.default_rng(0))
    assert set(item) >= {"latents", "task"} and item["latents"].shape == (4, 4, 16, 16)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors(tmp_path, vpp_video_datasets):
    empty = make_synthetic_dataset(tmp_path / "empty_task", ["", "pick up the cup"], frames_per_episode=6)
    with pytest.raises(
        ValueError, match=r"dataset local/synthetic: task index \[0\] has empty instruction text"
    ):
        LeRobotClipSource(GFDMDatasetConfig(repo_id="local/synthetic", root=str(empty)), None)

    bridge_root, _ = vpp_video_datasets["bridge"]
    too_short = GFDMDatasetConfig(
        repo_id="local/bridge", root=str(bridge_root), frame_stride=2, pad_short_clips=False
    )
    with pytest.raises(
        ValueError,
        match=r"no clip can be cut: a 16-frame clip \(stride mode\) needs 31 frames, the longest of 1 episodes has 24",
    ):
        GFDMClipDataset(LeRobotClipSource(too_short, None), num_frames=16, image_size=64)
    internet = GFDMDatasetConfig(
        repo_id="local/bridge", root=str(bridge_root), clip_mode="even", max_episode_frames=20
    )
    with pytest.raises(ValueError, match="longer than max_episode_frames=20"):
        GFDMClipDataset(LeRobotClipSource(internet, None), num_frames=16, image_size=64)
    with pytest.raises(
        ValueError, match=r"camera\(s\) \['wrist'\] not found; cameras are \['observation.images.rgb'\]"
    ):
        LeRobotClipSource(
            GFDMDatasetConfig(repo_id="local/bridge", root=str(bridge_root), cameras=["wrist"]), None
        )
    with pytest.raises(FileNotFoundError, match="is not a LeRobotDataset folder"):
        LeRobotClipSource(GFDMDatasetConfig(repo_id="local/none", root=str(tmp_path)), None)

    # a latent file shorter than its episode
    cache = tmp_path / "latents"
    save_latents_atomically(torch.zeros(10, 4, 8, 8), latent_file(cache, "observation.images.rgb", 0))
    short = GFDMClipDataset(
        LeRobotClipSource(
            GFDMDatasetConfig(repo_id="local/bridge", root=str(bridge_root), latent_dir=str(cache)), None
        ),
        num_frames=4,
        image_size=64,
        latent_dir=cache,
        latent_downsample=4,
    )
    with pytest.raises(ValueError, match=r"episode_000000.pt holds 10 frames but the episode has 24"):
        short[0]

    # an SVD folder missing parts
    svd = tmp_path / "svd"
    unet, _ = tiny_models()
    unet.save_pretrained(svd / "unet")
    (svd / "vae").mkdir()
    (svd / "vae" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing \['vae/diffusion_pytorch_model.safetensors'\]"):
        check_svd_init_folder(svd)
    with pytest.raises(FileNotFoundError, match=r"missing \['vae/diffusion_pytorch_model.safetensors'\]"):
        train(
            tiny_config(
                tmp_path / "run",
                [{"repo_id": "local/bridge", "root": str(bridge_root)}],
                f"--model.pretrained_path={svd}",
            )
        )

    with pytest.raises(ValueError, match="--push-to-hub needs --hub_repo_id"):
        tiny_config(tmp_path / "run", [{"repo_id": "a"}], "--push-to-hub")
    with pytest.raises(ValueError, match="give at least one dataset"):
        parse_config(TrainGFDMConfig, ["--config_path=gfdm_tiny.yaml"])
    config = tiny_config(tmp_path / "run", [{"repo_id": "a"}], "--push-to-hub", "--hub-repo-id=me/gfdm")
    assert config.push_to_hub and config.hub_repo_id == "me/gfdm"


def test_initialises_from_an_svd_folder(tmp_path):
    from safetensors.torch import load_file

    from lerobot_defi.pretrain.gfdm.config import GFDMModelConfig
    from lerobot_defi.pretrain.gfdm.parts import load_gfdm_parts

    unet, vae = tiny_models()
    unet.save_pretrained(tmp_path / "svd" / "unet")
    vae.save_pretrained(tmp_path / "svd" / "vae")  # no scheduler/: SVD's scheduler config is used
    parts = load_gfdm_parts(
        GFDMModelConfig(
            pretrained_path=str(tmp_path / "svd"),
            clip_text_path=None,
            clip_text_config=TINY["model"]["clip_text_config"],
        )
    )
    saved = load_file(tmp_path / "svd" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(parts.unet.state_dict()[k], v) for k, v in saved.items())
    assert parts.scheduler.config.prediction_type == "v_prediction"
    assert parts.scheduler.config.timestep_type == "continuous" and parts.scheduler.config.sigma_max == 700.0
    assert not any(p.requires_grad for p in parts.vae.parameters())


def test_tiny_preset_matches_the_tiny_policy():
    from lerobot_defi.policy.configuration_defi import load_preset

    policy = load_preset("tiny")
    assert TINY["model"]["unet_config"] == policy.gfdm_unet_config
    assert TINY["model"]["vae_config"] == policy.gfdm_vae_config
    assert TINY["model"]["clip_text_config"] == policy.clip_text_config
    assert TINY["num_frames"] == policy.gfdm_num_frames and TINY["image_size"] == policy.image_size
    official = yaml.safe_load((REPO_DIR / "configs" / "gfdm_official.yaml").read_text())
    defaults = TrainGFDMConfig(datasets=[GFDMDatasetConfig(repo_id="x")])
    assert official["lr"] == defaults.lr == 5e-6 and official["batch_size"] == defaults.batch_size == 6
    assert (
        tuple(official["objective"]["added_time_ids"])
        == defaults.objective.added_time_ids
        == (7.0, 127.0, 0.0)
    )


# ----------------------------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_calvin
def test_cli_trains_on_calvin_exports_a_folder_the_policy_loads(calvin_dataset, tmp_path):
    root, episodes = calvin_dataset
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [
            str(BIN / "lerobot-defi-train-gfdm"),
            "--config-path=gfdm_tiny.yaml",
            f"--output-dir={run}",
            f"--datasets={json.dumps([calvin_entry(root, val_episodes=[2], video_backend='pyav')])}",
            "--steps=40",
            "--num_workers=2",  # decoding in worker processes, training and validation
            "--val_every=20",
            "--save_every=20",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    metrics = read_metrics(run)
    losses = [m["loss"] for m in metrics if "loss" in m]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert [m["step"] for m in metrics if "val_loss" in m] == [5, 20, 40]
    assert val[-1] < 0.95 * val[0], val  # same clips and draws every time: the model got better

    grid = read_video(run / "samples" / "step_000000040.mp4")
    assert grid.shape == (4, 2 * 64 + 2, 2 * 66 - 2, 3)  # 4 frames; truth above prediction; 2 samples
    assert (run / "samples" / "step_000000040.gif").stat().st_size > 0

    folder = run / "gfdm"
    for part in (
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer.json",
        "model_index.json",
        "README.md",
        "gfdm_training.json",
    ):
        assert (folder / part).is_file(), part
    card = (folder / "README.md").read_text()
    assert (
        "library_name: diffusers" in card
        and "`local/calvin_gfdm`" in card
        and "optimisation steps: **40**" in card
    )
    assert "lr: 0.0003" in card  # the training config is in the card
    assert json.loads((folder / "gfdm_training.json").read_text())["step"] == 40

    # the folder feeds the policy's feature extractor and the DeFI policy
    pipe = GFDMVideoPipeline.from_pretrained(folder)
    extractor = GFDMFeatureExtractor.from_pretrained(folder, dtype=torch.float32, num_frames=4)
    from safetensors.torch import load_file

    trained = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(extractor.unet.conv_in.weight, trained["conv_in.weight"])
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    features = extractor(images, pipe.text_context([episodes[0][1], episodes[1][1]]))
    assert features.shape == (2, 4, 128, 8, 8) and torch.isfinite(features).all()

    from defi_test_utils import tiny_batch
    from defi_test_utils import tiny_config as tiny_policy_config

    from lerobot_defi.policy.modeling_defi import DeFIPolicy

    policy = DeFIPolicy(tiny_policy_config(gfdm_path=str(folder)))
    torch.testing.assert_close(policy.gfdm.unet.conv_in.weight, trained["conv_in.weight"])
    loss, _ = policy.forward(tiny_batch(policy.config, batch_size=2))
    assert torch.isfinite(loss)
    frames = pipe(images, ["open the drawer", "push the block"], num_frames=4, num_inference_steps=2)
    assert frames.shape == (2, 4, 3, 64, 64)


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(vpp_video_datasets, tmp_path):
    from safetensors.torch import load_file

    # a two-dataset mixture of real Bridge / RT-1 frames (clips of 4 frames at stride 2)
    datasets = [
        {"repo_id": f"local/{name}", "root": str(root), "weight": weight, "video_backend": "pyav"}
        for (name, (root, _)), weight in zip(vpp_video_datasets.items(), (0.6, 0.4))
    ]
    flags = [
        "--steps=6",
        "--save_every=3",
        "--log_every=1",
        "--val_first_step=0",
        "--sample_videos.num_videos=0",
    ]
    train(tiny_config(tmp_path / "straight", datasets, *flags))
    train(tiny_config(tmp_path / "resumed", datasets, *flags[1:], "--steps=3"))
    assert (tmp_path / "resumed" / "checkpoints" / "last").resolve().name == "000000003"
    train(tiny_config(tmp_path / "resumed", datasets, *flags, "--resume=true"))

    def numbers(run):  # everything but the speed
        return [{k: v for k, v in m.items() if k != "samples_per_s"} for m in read_metrics(run)]

    assert len(numbers(tmp_path / "straight")) == 6
    assert numbers(tmp_path / "resumed") == numbers(tmp_path / "straight")
    straight = load_file(tmp_path / "straight" / "gfdm" / "unet" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "gfdm" / "unet" / "diffusion_pytorch_model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    initial = load_file(
        next((tmp_path / "straight" / "checkpoints" / "000000003").glob("model*.safetensors"))
    )
    assert any(not torch.equal(initial[k], straight[k]) for k in straight)
    with pytest.raises(FileExistsError, match="already holds training checkpoints: pass --resume=true"):
        train(tiny_config(tmp_path / "straight", datasets, *flags))


@pytest.mark.slow
def test_trains_on_vpp_samples_from_video_cache_and_pt_latents(vpp_video_datasets, tmp_path):
    bridge_root, _ = vpp_video_datasets["bridge"]
    rt1_root, _ = vpp_video_datasets["rt1"]
    mixture = [
        {
            "repo_id": "local/bridge",
            "root": str(bridge_root),
            "weight": 0.5,
            "clip_mode": "even",
            "max_episode_frames": 100,
        },
        {
            "repo_id": "local/rt1",
            "root": str(rt1_root),
            "weight": 0.5,
            "clip_mode": "even",
            "max_episode_frames": 100,
        },
    ]
    flags = ["--steps=3", "--val_first_step=0", "--log_every=1", "--sample_videos.num_videos=0"]
    folder = train(tiny_config(tmp_path / "cached", mixture, *flags, "--latent_cache.enabled=true"))
    cache = tmp_path / "cached" / "latent_cache"
    assert torch.load(
        latent_file(cache / "local__rt1", "observation.images.rgb", 0), weights_only=True
    ).shape == (29, 4, 16, 16)
    assert all(math.isfinite(m["loss"]) for m in read_metrics(tmp_path / "cached"))
    with pytest.raises(ValueError, match=r"was made with different \['image_size'\]"):
        train(
            tiny_config(
                tmp_path / "other",
                mixture,
                *flags,
                "--latent_cache.enabled=true",
                f"--latent_cache.dir={cache}",
                "--image_size=32",
            )
        )
    # the exported folder feeds the policy's feature extractor; the card names the mixture
    extractor = GFDMFeatureExtractor.from_pretrained(folder, dtype=torch.float32, num_frames=4)
    context = GFDMVideoPipeline.from_pretrained(folder).text_context(["put the pot in the rack"])
    assert extractor(torch.rand(1, 3, 64, 64) * 2 - 1, context).shape == (1, 4, 128, 8, 8)
    card = (folder / "README.md").read_text()
    assert "| `local/bridge` | 0.500 |" in card and "| `local/rt1` | 0.500 |" in card
    assert "optimisation steps: **3**" in card

    # VPP's SVD latents are 32 x 32; the tiny VAE downsamples by 4, so they stand for 128 px frames here
    vpp = [
        {
            "repo_id": "vpp/bridge",
            "root": str(VPP_SLICE / "bridge"),
            "format": "vpp",
            "split": "val",
            "clip_mode": "even",
        }
    ]
    folder = train(tiny_config(tmp_path / "vpp", vpp, *flags, "--image_size=128", "--num_frames=16"))
    assert all(math.isfinite(m["loss"]) for m in read_metrics(tmp_path / "vpp"))
    assert json.loads((folder / "gfdm_training.json").read_text())["num_frames"] == 16


@pytest.mark.slow
@needs_calvin
def test_two_processes_shard_the_work_and_rank0_writes(calvin_dataset, tmp_path):
    root, _ = calvin_dataset
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(BIN / "lerobot-defi-train-gfdm"),
            "--config_path=gfdm_tiny.yaml",
            f"--output_dir={run}",
            f"--datasets={json.dumps([calvin_entry(root, val_episodes=[2], video_backend='pyav')])}",
            "--steps=4",
            "--save_every=2",
            "--log_every=2",
            "--val_first_step=2",
            "--val_every=100",
            "--latent_cache.enabled=true",
            "--sample_videos.num_videos=1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    written = [int(n) for n in re.findall(r"process \d encoded (\d+) latent files", result.stderr)]
    assert sorted(written) == [3, 3]  # 3 episodes x 2 cameras, split between the processes
    checkpoint = run / "checkpoints" / "000000004"
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [2, 2, 4]  # one line per event: written by rank 0 only
    assert metrics[0]["samples_per_s"] > 0 and "val_loss" in metrics[1] and "loss" in metrics[2]
    assert len(list((run / "samples").glob("*.mp4"))) == 1
    assert (run / "gfdm" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_full_size_training_step_on_gpu():
    from diffusers import UNetSpatioTemporalConditionModel

    from lerobot_defi.models.reference_architectures import SVD_UNET

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    device = torch.device("cuda")
    unet = UNetSpatioTemporalConditionModel(**SVD_UNET).to(device)
    unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-6)
    clean = torch.randn(1, 16, 4, 32, 32, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = gfdm_v_objective_loss(
            unet,
            clean,
            clean[:, 0] / 0.18215,
            torch.randn(1, 20, 1024, device=device),
            torch.tensor([[7.0, 127.0, 0.0]], device=device),
            torch.tensor([1.0], device=device),
        ).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in unet.parameters())
