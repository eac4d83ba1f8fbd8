"""GIDM pretraining (``lerobot-defi-train-gidm``): frame pairs, augmentation, frozen features, codebook
bookkeeping, bad input, and end-to-end CLI runs on real video (RT-1 and Bridge samples of tests/data/vpp_slice)
converted to small LeRobotDatasets: losses, dead-code reset, save/load, the policy taking the encoder,
resume, the visual check, 2-process DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from defi_test_utils import REPO_DIR, TESTS_DIR, tiny_config
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot_defi.presets import preset_path
from safetensors.torch import load_file

from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.pretrain.gidm.codebook import CodebookMonitor
from lerobot_defi.pretrain.gidm.config import GIDMTrainConfig
from lerobot_defi.pretrain.gidm.features import (
    DinoPatchFeatures,
    T5InstructionFeatures,
    build_frozen_encoders,
    encode_pair_features,
)
from lerobot_defi.pretrain.gidm.frame_pairs import (
    FramePairDataset,
    FramePairSourceConfig,
    PairAugmentation,
    draw_run_gap,
    normalize_instruction,
)
from lerobot_defi.pretrain.gidm.inspection import group_by_latent_action
from lerobot_defi.pretrain.gidm.trainer import resolve_model_config
from lerobot_defi.pretrain.shared.cli import parse_config
from lerobot_defi.pretrain.train_gidm import main

VPP_SLICE = TESTS_DIR / "data" / "vpp_slice"
CAMERA = "observation.images.image_0"
FRAME_SHAPE = (48, 64)  # (H, W) the real frames are resized to before writing the test datasets


def _read_video(path: Path) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames of a real sample video, resized to ``FRAME_SHAPE``."""
    with av.open(str(path)) as container:
        return np.stack(
            [
                f.to_ndarray(format="rgb24", height=FRAME_SHAPE[0], width=FRAME_SHAPE[1])
                for f in container.decode(video=0)
            ]
        )


def _write_dataset(root: Path, repo_id: str, fps: int, episodes: list[tuple[np.ndarray, str]]) -> Path:
    features = {
        CAMERA: {"dtype": "video", "shape": (*FRAME_SHAPE, 3), "names": ["height", "width", "channels"]}
    }
    dataset = LeRobotDataset.create(repo_id, fps=fps, features=features, root=root, use_videos=True)
    for frames, task in episodes:
        for frame in frames:
            dataset.add_frame({CAMERA: frame, "task": task})
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Small LeRobotDatasets made of real robot video frames (RT-1: 29 frames at 3 fps, Bridge: 24 at 5 fps)."""
    if not (VPP_SLICE / "rt1" / "videos" / "val" / "6" / "rgb.mp4").is_file():
        pytest.skip(f"the VPP sample slice is missing: {VPP_SLICE}")
    rt1 = _read_video(VPP_SLICE / "rt1" / "videos" / "val" / "6" / "rgb.mp4")
    bridge = _read_video(VPP_SLICE / "bridge" / "videos" / "val" / "10" / "rgb.mp4")
    base = tmp_path_factory.mktemp("gidm_datasets")
    return {
        "rt1": _write_dataset(
            base / "rt1",
            "test/rt1",
            3,
            [(rt1[:15], "Pick brown chip bag."), (rt1[15:], "pick brown chip bag")],
        ),
        "bridge": _write_dataset(
            base / "bridge",
            "test/bridge",
            5,
            [
                (bridge[:12], "Put pot or pan from sink into drying rack"),
                (bridge[12:], "put the pot in the rack"),
            ],
        ),
        "single_frames": _write_dataset(
            base / "single", "test/single", 3, [(rt1[i : i + 1], "pick brown chip bag") for i in range(3)]
        ),
        "missing_task": _write_dataset(
            base / "missing", "test/missing", 3, [(rt1[:6], ""), (rt1[6:12], "pick brown chip bag")]
        ),
    }


def _source(root: Path, **fields) -> FramePairSourceConfig:
    repo_id = {"rt1": "test/rt1", "bridge": "test/bridge"}.get(root.name, f"test/{root.name}")
    return FramePairSourceConfig(repo_id=repo_id, root=str(root), **fields)


def _tiny_preset() -> GIDMTrainConfig:
    return parse_config(GIDMTrainConfig, ["--config_path=gidm_tiny.yaml"])


# ---------------------------------------------------------------------------------------------------------------
# frame pairs
# ---------------------------------------------------------------------------------------------------------------
def test_pairs_are_frame_t_and_t_plus_gap_clamped_at_episode_end(datasets):
    pairs = FramePairDataset(_source(datasets["rt1"], gap=4), image_size=FRAME_SHAPE[1])
    plain = LeRobotDataset("test/rt1", root=datasets["rt1"])
    resize = PairAugmentation(FRAME_SHAPE[1], augment=False)
    assert len(pairs) == 29  # every frame starts a pair (official clamp keeps the last ones)
    assert pairs.report.clamped_pairs == 2 * 4  # the last 4 frames of each episode
    for index, (t, target) in {0: (0, 4), 12: (12, 14), 14: (14, 14), 15: (15, 19), 28: (28, 28)}.items():
        item = pairs[index]
        expected = resize(torch.stack([plain[t][CAMERA], plain[target][CAMERA]]))
        torch.testing.assert_close(item["frames"], expected)
        assert item["gap"] == 4 and item["task"] == "pick brown chip bag"
        assert (item["episode_index"], item["frame_index"]) == (int(t >= 15), t - 15 * int(t >= 15))

    dropped = FramePairDataset(_source(datasets["rt1"], gap=4), image_size=32, end_of_episode="drop")
    assert len(dropped) == 29 - 8 and dropped.report.dropped_past_end == 8


def test_gap_is_drawn_once_per_run_from_the_seed_or_per_sample(datasets):
    source = _source(datasets["bridge"], gap_range=[2, 6])
    draws = {draw_run_gap(source, seed) for seed in range(40)}
    assert draws <= {2, 3, 4, 5, 6} and len(draws) > 1
    per_run = FramePairDataset(source, image_size=32, seed=7)
    assert per_run.gaps == [draw_run_gap(source, 7)] == FramePairDataset(source, image_size=32, seed=7).gaps
    assert {per_run.sample(3, np.random.default_rng(s))["gap"] for s in range(10)} == set(per_run.gaps)

    per_sample = FramePairDataset(source, image_size=32, gap_sampling="per_sample")
    gaps = [per_sample.sample(0, np.random.default_rng(s))["gap"] for s in range(30)]
    assert set(gaps) == {2, 3, 4, 5, 6}
    # same seed, same sample (resumable, independent of the worker that loads it)
    a, b = (per_sample.sample(5, np.random.default_rng(11)) for _ in range(2))
    assert a["gap"] == b["gap"] and torch.equal(a["frames"], b["frames"])
    plain = LeRobotDataset("test/bridge", root=datasets["bridge"])
    resize = PairAugmentation(32, augment=False)
    torch.testing.assert_close(a["frames"][1], resize(plain[5 + a["gap"]][CAMERA][None])[0])


def test_augmentation_applies_the_same_crop_and_jitter_to_both_frames(datasets):
    plain = LeRobotDataset("test/rt1", root=datasets["rt1"])
    frame = plain[3][CAMERA]
    augment = PairAugmentation(40, augment=True)
    torch.manual_seed(0)
    twin = augment(torch.stack([frame, frame]))
    assert twin.shape == (2, 3, 40, 40) and twin.min() >= 0 and twin.max() <= 1
    torch.testing.assert_close(twin[0], twin[1])  # identical inputs stay identical: one set of parameters
    resized = PairAugmentation(40, augment=False)(frame[None])[0]
    assert (twin[0] - resized).abs().mean() > 1e-3  # and the augmentation did change the image
    torch.manual_seed(1)
    assert not torch.allclose(augment(torch.stack([frame, frame]))[0], twin[0])  # new draw, new parameters


def test_instruction_normalisation():
    assert normalize_instruction("  Put the Pot, in the rack!  ") == "put the pot in the rack"
    assert normalize_instruction("") == ""


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
def test_single_frame_episodes_and_gaps_longer_than_episodes(datasets, caplog):
    with pytest.raises(ValueError, match=r"no frame pair.*3 episodes with fewer than 2 frames"):
        FramePairDataset(_source(datasets["single_frames"]), image_size=32)
    with pytest.raises(ValueError, match=r"longest 15 frames, gap \[20\].*smaller gap"):
        FramePairDataset(_source(datasets["rt1"], gap=20), image_size=32, end_of_episode="drop")
    with caplog.at_level("INFO"):
        clamped = FramePairDataset(_source(datasets["rt1"], gap=20), image_size=32)
    assert clamped.report.clamped_pairs == len(clamped) == 29
    assert "end at the episode's last frame" in caplog.text
    item = clamped[0]  # (0, 14): the episode's last frame
    torch.testing.assert_close(item["frames"][1], clamped[14]["frames"][0])


def test_missing_task_text_error_skip_or_keep(datasets, caplog):
    source = _source(datasets["missing_task"])
    with pytest.raises(ValueError, match=r"6 frames of episodes \[0\] have an empty `task`"):
        FramePairDataset(source, image_size=32, missing_task="error")
    with caplog.at_level("WARNING"):
        skipped = FramePairDataset(source, image_size=32)
    assert len(skipped) == 6 and {skipped[i]["episode_index"] for i in range(6)} == {1}
    assert "6 frames have no task text (skipped)" in caplog.text
    kept = FramePairDataset(source, image_size=32, missing_task="keep")
    assert len(kept) == 12 and kept[0]["task"] == ""


def test_bad_sources_are_named(datasets, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test/nothing.*no meta/info.json"):
        FramePairDataset(FramePairSourceConfig(repo_id="test/nothing", root=str(tmp_path)), image_size=32)
    with pytest.raises(ValueError, match=r"camera_key 'observation.images.wrist' not found; cameras: \['obs"):
        FramePairDataset(_source(datasets["rt1"], camera_key="observation.images.wrist"), image_size=32)
    with pytest.raises(ValueError, match="not both"):
        FramePairSourceConfig(repo_id="x", gap=3, gap_range=[2, 4])
    with pytest.raises(ValueError, match="gap_range must be"):
        FramePairSourceConfig(repo_id="x", gap_range=[4, 2])
    with pytest.raises(ValueError, match="gap_sampling must be one of"):
        FramePairDataset(_source(datasets["rt1"]), image_size=32, gap_sampling="sometimes")


# ---------------------------------------------------------------------------------------------------------------
# frozen features, model config, codebook bookkeeping
# ---------------------------------------------------------------------------------------------------------------
def test_dino_patch_features_drop_cls_and_registers():
    cfg = _tiny_preset()
    dino, _ = build_frozen_encoders(None, cfg.dinov2_config, None, cfg.t5_config, seed=0)
    images = torch.rand(3, 3, 112, 112)
    tokens = dino(images)
    assert tokens.shape == (3, 64, 32) and dino.num_patches(112) == 64
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    full = dino.model(pixel_values=(images - mean) / std).last_hidden_state
    assert full.shape[1] == 1 + 4 + 64
    torch.testing.assert_close(tokens, full[:, 5:])
    no_registers = DinoPatchFeatures.load(None, {**cfg.dinov2_config, "model_type": "dinov2"})
    assert no_registers(images).shape == (3, 64, 32) and no_registers.num_prefix_tokens == 1
    with pytest.raises(ValueError, match="not a multiple of the DINOv2 patch size 14"):
        dino.num_patches(100)
    # the same seed rebuilds the same random encoders (every process, the inspection tool)
    again, _ = build_frozen_encoders(None, cfg.dinov2_config, None, cfg.t5_config, seed=0)
    torch.testing.assert_close(again(images), tokens)


def test_t5_features_are_cached_padded_with_t5_outputs_and_masked():
    cfg = _tiny_preset()
    t5 = T5InstructionFeatures.load(None, cfg.t5_config)
    texts = ["open the drawer", "go", "open the drawer"]
    hidden, mask = t5(texts)
    assert hidden.shape == (3, 16, 32) and mask.sum(-1).tolist() == [16, 3, 16]  # bytes + </s>
    # As the original: T5 on the batch padded to its longest (ids and mask); padded slots hold T5 outputs.
    tokens = t5.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = t5.model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-6)
    assert hidden[1, 3:].abs().amin() > 0
    torch.testing.assert_close(hidden[0], hidden[2])
    alone, _ = t5(["go"])
    torch.testing.assert_close(alone[0], hidden[1, :3])
    assert len(t5._cache) == 2


def test_model_config_follows_the_frozen_encoders():
    cfg = _tiny_preset()
    dino, t5 = build_frozen_encoders(None, cfg.dinov2_config, None, cfg.t5_config, seed=0)
    resolved = resolve_model_config(cfg.model, dino, t5, image_size=112)
    assert (resolved.num_patches, resolved.text_dim, resolved.model_dim) == (64, 32, 32)
    with pytest.raises(ValueError, match="model_dim=768 must equal the DINOv2 hidden size 32"):
        resolve_model_config(GIDMConfig(), dino, t5, image_size=112)
    frames = torch.rand(2, 2, 3, 112, 112)
    visual, text, mask = encode_pair_features(dino, t5, frames, ["a", "bb"])
    assert (
        visual.shape == (2, 2, 64, 32)
        and text.shape == (2, 3, 32)
        and mask.tolist()
        == [
            [True, True, False],
            [True, True, True],
        ]
    )
    out = LatentActionModel(resolved)(visual, text, mask)
    assert torch.isfinite(out["loss"])


def test_codebook_monitor_usage_perplexity_and_reset():
    torch.manual_seed(0)
    model = LatentActionModel(
        GIDMConfig(
            model_dim=16,
            num_heads=2,
            encoder_blocks=1,
            decoder_blocks=1,
            latent_dim=4,
            codebook_size=8,
            num_patches=4,
            text_dim=8,
        )
    )
    quantizer = model.encoder.quantizer
    monitor = CodebookMonitor(8)
    monitor.update(torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]))
    assert monitor.window.tolist() == [4, 4, 0, 0, 0, 0, 0, 0]
    stats = monitor.window_stats()
    assert stats == {"codebook_usage": 0.25, "codebook_perplexity": pytest.approx(2.0)}
    assert monitor.window.sum() == 0 and monitor.since_reset.sum() == 8
    before = quantizer.codebook.weight.detach().clone()
    # codes 2..7 died on this process; another process used code 5: it survives the all-process reset
    total = monitor.since_reset + torch.tensor([0, 0, 0, 0, 0, 3, 0, 0])
    replaced = monitor.reset_dead_codes(quantizer, torch.Generator().manual_seed(0), total)
    after = quantizer.codebook.weight.detach()
    assert replaced == 5 and monitor.since_reset.sum() == 0
    torch.testing.assert_close(after[[0, 1, 5]], before[[0, 1, 5]])
    for code in (2, 3, 4, 6, 7):
        assert any(torch.equal(after[code], before[alive]) for alive in (0, 1, 5))


# ---------------------------------------------------------------------------------------------------------------
# the CLI end to end
# ---------------------------------------------------------------------------------------------------------------
def _cli_args(datasets: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    mixture = (
        f"[{{repo_id: test/rt1, root: '{datasets['rt1']}', gap: 3}}, "
        f"{{repo_id: test/bridge, root: '{datasets['bridge']}', gap_range: [2, 4], weight: 2.0, "
        "val_episodes: [1]}]"
    )
    return [
        "--config_path=gidm_tiny.yaml",
        f"--datasets={mixture}",
        f"--output_dir={output_dir}",
        *extra,
    ]


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory) -> Path:
    """One tiny training run (40 steps, batch 8) on the real-video mixture."""
    output_dir = tmp_path_factory.mktemp("gidm_run") / "run"
    main(_cli_args(datasets, output_dir))
    return output_dir


def test_training_losses_decrease_and_codebook_is_monitored(trained):
    lines = [m for m in _metrics(trained) if "loss" in m]
    assert [m["step"] for m in lines] == sorted({m["step"] for m in lines})  # one line per step, in order
    losses = [m["loss"] for m in lines]
    assert all(np.isfinite(losses)) and lines[-1]["step"] == 40
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    for m in lines:
        np.testing.assert_allclose(
            m["loss"], m["reconstruction_loss"] + m["code_loss"] + 0.25 * m["commitment_loss"], rtol=1e-5
        )
        assert 0 < m["codebook_usage"] <= 1 and 1 <= m["codebook_perplexity"] <= 16
    resets = [m["codes_reset"] for m in lines if "codes_reset" in m]
    assert resets and resets[0] > 0  # a freshly initialised codebook has dead codes: the reset fires
    val = [m for m in _metrics(trained) if "val_loss" in m]
    assert [m["step"] for m in val] == [20, 40] and val[-1]["val_loss"] < val[0]["val_loss"]


def test_saved_model_round_trip_card_and_training_record(trained):
    model_dir = trained / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "README.md",
        "config.json",
        "gidm_training.json",
        "latent_actions.json",
        "latent_actions.png",
        "model.safetensors",
    ]
    assert not list(trained.glob(".model*"))  # no half-written folder left behind
    loaded = LatentActionModel.from_pretrained(model_dir)
    assert loaded.config.num_patches == 64 and loaded.config.text_dim == 32
    final_checkpoint = load_file(trained / "checkpoints" / "000000040" / "model.safetensors")
    state = loaded.state_dict()
    assert set(final_checkpoint) == set(state)
    for key, value in final_checkpoint.items():
        torch.testing.assert_close(state[key], value, msg=key)
    info = json.loads((model_dir / "gidm_training.json").read_text())
    assert info["steps"] == 40 and info["image_size"] == 112
    assert [d["gap"] for d in info["datasets"]] == [
        3,
        draw_run_gap(_source(Path("bridge"), gap_range=[2, 4]), 42),
    ]
    # balanced mixture: weight x pairs (rt1: 29 pairs x 1, bridge train episode 0: 12 pairs x 2)
    assert [d["pairs"] for d in info["datasets"]] == [29, 12]
    np.testing.assert_allclose([d["probability"] for d in info["datasets"]], [29 / 53, 24 / 53])
    card = (model_dir / "README.md").read_text()
    assert "library_name: lerobot_defi" in card and "optimisation steps: **40**" in card
    assert "`test/bridge` | 0.453" in card and "--policy.gidm_path=" in card


def test_policy_takes_every_encoder_tensor_of_the_saved_gidm(trained):
    from lerobot_defi.policy.modeling_defi import DeFIPolicy

    model_dir = trained / "model"
    policy = DeFIPolicy(tiny_config(gidm_path=str(model_dir)))
    report = policy.gidm_load_report
    expected = set(policy.gidm.state_dict())
    assert set(report["loaded_tensors"]) == expected  # zero missing encoder keys
    assert report["unused_decoder_tensors"] > 0
    saved = LatentActionModel.from_pretrained(model_dir).encoder.state_dict()
    for key, value in policy.gidm.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)


def test_visual_check_groups_pairs_by_their_latent_action(trained, datasets):
    records = json.loads((trained / "model" / "latent_actions.json").read_text())
    groups = records["groups"]
    assert records["summary"]["num_pairs"] == sum(len(g["pairs"]) for g in groups) > 1
    assert records["summary"]["distinct_latent_actions"] == len(groups)
    assert {p["repo_id"] for g in groups for p in g["pairs"]} == {"test/rt1", "test/bridge"}
    # re-encode the recorded pairs with the saved model: every pair gets the code of its group
    cfg = _tiny_preset()
    model = LatentActionModel.from_pretrained(trained / "model").eval()
    dino, t5 = build_frozen_encoders(None, cfg.dinov2_config, None, cfg.t5_config, seed=42)
    sets = {
        "test/rt1": FramePairDataset(_source(datasets["rt1"], gap=3), image_size=112),
        "test/bridge": FramePairDataset(
            _source(datasets["bridge"], gap_range=[2, 4]), image_size=112, episodes=[1]
        ),
    }
    for group in groups[:3]:
        for pair in group["pairs"][:2]:
            dataset = sets[pair["repo_id"]]
            table = dataset.dataset.hf_dataset.data
            row = np.flatnonzero(
                (table.column("episode_index").to_numpy() == pair["episode_index"])
                & (table.column("frame_index").to_numpy() == pair["frame_index"])
            )[0]
            item = dataset[int(np.searchsorted(dataset.start_indices, row))]
            assert (item["episode_index"], item["frame_index"]) == (
                pair["episode_index"],
                pair["frame_index"],
            )
            with torch.no_grad():
                visual, text, mask = encode_pair_features(dino, t5, item["frames"][None], [item["task"]])
                code = model.encoder(visual, text, mask)["indices"][0].tolist()
            assert code == group["code"]


def test_inspect_cli_on_a_saved_model(trained, datasets, tmp_path, capsys):
    from lerobot_defi.pretrain.gidm.inspection import main as inspect_main

    inspect_main(
        [
            f"--model_path={trained / 'model'}",
            f"--datasets=[{{repo_id: test/rt1, root: '{datasets['rt1']}', gap: 3}}]",
            f"--output_dir={tmp_path}",
            "--num_pairs=10",
            "--device=cpu",
        ]
    )
    out = capsys.readouterr().out  # (huggingface_hub prints "Loading weights ..." first)
    summary = json.loads(out[out.index("{") :])
    records = json.loads((tmp_path / "latent_actions.json").read_text())
    assert records["summary"] == summary and summary["num_pairs"] == 10
    assert {p["repo_id"] for g in records["groups"] for p in g["pairs"]} == {"test/rt1"}
    assert (tmp_path / "latent_actions.png").stat().st_size > 1000


def test_group_by_latent_action_orders_by_frequency():
    from lerobot_defi.pretrain.gidm.inspection import LatentActionRecord

    def record(code):
        return LatentActionRecord("d", 0, 0, 1, "t", code, np.zeros((2, 4, 3), np.uint8))

    groups = group_by_latent_action([record((1, 2)), record((0, 3)), record((1, 2)), record((0, 1))])
    assert [(code, len(members)) for code, members in groups] == [((1, 2), 2), ((0, 1), 1), ((0, 3), 1)]


@pytest.mark.slow
def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(datasets, tmp_path):
    short = ["--steps=10", "--batch_size=4", "--save_every=4", "--eval_every=100", "--inspect_pairs=4"]
    straight = tmp_path / "straight"
    main(_cli_args(datasets, straight, *short))
    interrupted = tmp_path / "interrupted"
    main(_cli_args(datasets, interrupted, *short[1:], "--steps=5"))  # stops after step 5 (checkpoints 4, 5)
    with pytest.raises(FileExistsError, match="--resume=true"):
        main(_cli_args(datasets, interrupted, *short))
    main(_cli_args(datasets, interrupted, *short, "--resume=true"))
    train_lines = [[m for m in _metrics(run) if "loss" in m] for run in (straight, interrupted)]
    assert [m["step"] for m in train_lines[0]] == [m["step"] for m in train_lines[1]] == [5, 10]
    assert train_lines[0] == [
        {**m, "samples_per_s": train_lines[0][i]["samples_per_s"]} for i, m in enumerate(train_lines[1])
    ]
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_push_to_hub_uploads_the_finished_model_folder(datasets, tmp_path, monkeypatch):
    import lerobot_defi.pretrain.gidm.trainer as gidm_trainer

    pushed = []

    def fake_push(folder, repo_id, **kwargs):
        pushed.append((Path(folder), repo_id, sorted(p.name for p in Path(folder).iterdir()), kwargs))
        return "https://huggingface.co/u/gidm/commit/0"

    monkeypatch.setattr(gidm_trainer, "push_folder_to_hub", fake_push)
    args = ["--steps=2", "--batch_size=4", "--inspect_pairs=4", "--push-to-hub", "--hub_repo_id=u/gidm"]
    main(_cli_args(datasets, tmp_path / "run", *args))
    [(folder, repo_id, files, options)] = pushed
    assert folder == tmp_path / "run" / "model" and repo_id == "u/gidm" and options["private"] is None
    assert {"README.md", "config.json", "model.safetensors", "gidm_training.json"} <= set(files)
    assert "gidm_path=u/gidm" in (folder / "README.md").read_text()
    with pytest.raises(ValueError, match="needs --hub_repo_id"):
        main(_cli_args(datasets, tmp_path / "other", "--push-to-hub"))


@pytest.mark.slow
def test_two_processes_ddp_on_cpu_match_one_process_with_the_global_batch(datasets, tmp_path):
    """torchrun, 2 CPU processes (gloo) x batch 4 == 1 process x batch 8: the sampler shards one global order
    (no sample seen twice, none skipped), gradients and codebook counts are summed over processes, dead codes
    are reset identically; only the main process logs and exports; one RNG file per process is saved."""
    mixture = (
        f"--datasets=[{{repo_id: test/rt1, root: '{datasets['rt1']}', gap: 3, episodes: [1]}}, "
        f"{{repo_id: test/bridge, root: '{datasets['bridge']}', gap: 2, episodes: [0]}}]"
    )  # 14 + 12 pairs: an even count, so 2 processes hold exactly the single process's epoch
    common = ["--config_path=gidm_tiny.yaml", mixture, "--steps=6", "--save_every=6", "--log_every=1"]
    # (the official padding-mask ordering makes a sample depend on its batch neighbours: use the fixed one)
    common.append("--model.tiled_padding_mask=false")
    single = tmp_path / "single"
    main(
        [*common, f"--output_dir={single}", "--batch_size=8", "--codebook_reset_every=2", "--inspect_pairs=4"]
    )
    ddp = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "lerobot_defi.pretrain.train_gidm", *common, f"--output_dir={ddp}", "--batch_size=4"]
    command += ["--codebook_reset_every=2", "--inspect_pairs=4"]
    result = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("weights identical on all 2 processes") == 1
    assert result.stderr.count("GIDM written to") == 1

    single_lines, ddp_lines = ([m for m in _metrics(run) if "loss" in m] for run in (single, ddp))
    assert [m["step"] for m in ddp_lines] == [m["step"] for m in single_lines] == [1, 2, 3, 4, 5, 6]
    for one, two in zip(single_lines, ddp_lines):
        assert ("codes_reset" in one) == ("codes_reset" in two) == (one["step"] % 2 == 0)
        for key in ("loss", "reconstruction_loss", "codebook_usage", "codebook_perplexity", "codes_reset"):
            assert two.get(key, 0) == pytest.approx(one.get(key, 0), rel=1e-4, abs=1e-6), (one["step"], key)
    a = load_file(single / "model" / "model.safetensors")
    b = load_file(ddp / "model" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)
    checkpoint = ddp / "checkpoints" / "000000006"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["num_processes"] == 2 and len(state["codebook_counts"]) == 2


@pytest.mark.gpu
def test_full_size_step_on_gpu():
    """One official-size training step (random DINOv2-B/14-reg, T5-base and GIDM weights) on CUDA in bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    sys.path.insert(0, str(REPO_DIR / "benchmarks"))
    from bench_gidm_step import run_benchmark

    result = run_benchmark(tiny=False, device="cuda", batch_size=8, steps=3, warmup=1, precision="bf16")
    assert np.isfinite(result["last_loss"]) and result["samples_per_s"] > 0
    assert result["peak_memory_gib"] < 40


def test_tiny_preset_matches_the_tiny_policy():
    policy_gidm = tiny_config().gidm
    cfg = _tiny_preset()
    assert preset_path("gidm_official.yaml").is_file()
    for name in ("model_dim", "latent_dim", "codebook_size", "num_latent_tokens", "num_heads"):
        assert getattr(cfg.model, name) == getattr(policy_gidm, name), name
    assert cfg.dinov2_config["hidden_size"] == cfg.model.model_dim
    assert (cfg.image_size // cfg.dinov2_config["patch_size"]) ** 2 == 64  # = the tiny policy's GFDM grid
