"""CALVIN -> LeRobotDataset on the real slice (tests/data/calvin_mini_slice): counts, instructions, pixels,
bit-exact actions, layouts, scenes, resume, bad input, and a DeFI training step on what it writes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from defi_test_utils import assert_stopped_incomplete
from lerobot.datasets import LeRobotDataset
from lerobot_defi.conversions.calvin import convert_calvin, main
from lerobot_defi.conversions.calvin_format import CalvinFormatError, frame_instructions, plan_episodes
from lerobot_defi.conversions.conversion_errors import ConversionInputError


def frames_of(split_dir, first, last):
    return [np.load(split_dir / f"episode_{i:07d}.npz") for i in range(first, last + 1)]


@pytest.fixture(scope="module")
def windows_dataset(tmp_path_factory):
    from defi_test_utils import CALVIN_SLICE

    root = convert_calvin(
        CALVIN_SLICE / "training",
        "local/calvin_windows",
        root=tmp_path_factory.mktemp("w") / "ds",
        progress=False,
    )
    return root, LeRobotDataset("local/calvin_windows", root=root, video_backend="pyav")


def test_windows_layout_counts_instructions_and_exact_actions(windows_dataset, calvin_slice):
    root, dataset = windows_dataset
    split = calvin_slice / "training"
    annotations = np.load(split / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    windows = annotations["info"]["indx"]
    assert dataset.num_episodes == len(windows) == 2
    assert dataset.num_frames == sum(end - start for start, end in windows)  # frames start .. end-1
    assert dataset.meta.fps == 30 and dataset.meta.video_files_size_in_mb == 20
    episodes = json.loads((root / "meta" / "calvin_episodes.json").read_text())
    for episode, (start, end), sentence in zip(episodes, windows, annotations["language"]["ann"]):
        assert episode["tasks"] == [sentence] and episode["calvin_frames"] == [start, end - 1]
        assert episode["scene"] == "D" and episode["split"] == "training"
    index = 0
    for (start, end), sentence in zip(windows, annotations["language"]["ann"]):
        for k, frame in enumerate(frames_of(split, start, end - 1)):
            item = dataset[index]
            assert item["task"] == sentence
            np.testing.assert_array_equal(item["action"].numpy(), frame["rel_actions"].astype(np.float32))
            np.testing.assert_array_equal(
                item["observation.state"].numpy(), frame["robot_obs"].astype(np.float32)
            )
            np.testing.assert_array_equal(
                item["observation.environment_state"].numpy(), frame["scene_obs"].astype(np.float32)
            )
            assert item["calvin_frame"].item() == start + k and item["calvin_scene"].item() == 3
            if k in (0, 20):  # decoded video within codec tolerance of the npz pixels
                for key, feature in (
                    ("rgb_static", "observation.images.static"),
                    ("rgb_gripper", "observation.images.gripper"),
                ):
                    decoded = (item[feature].permute(1, 2, 0).numpy() * 255).astype(np.float32)
                    assert np.abs(decoded - frame[key].astype(np.float32)).mean() < 6.0
            index += 1


def test_every_episode_video_has_one_frame_per_row(windows_dataset):
    """LeRobot's streaming encoder drops frames when its queue stays full; every video must match its rows."""
    _, dataset = windows_dataset
    episodes = dataset.meta.episodes.with_format(None)[:]
    for key in ("observation.images.static", "observation.images.gripper"):
        durations = np.subtract(
            episodes[f"videos/{key}/to_timestamp"], episodes[f"videos/{key}/from_timestamp"]
        )
        np.testing.assert_allclose(durations * dataset.meta.fps, episodes["length"], atol=1e-3)


def test_a_stalled_video_encoder_loses_no_frame(tmp_path, calvin_slice, monkeypatch):
    """With LeRobot's default queue (30 frames, 0.1 s put timeout) a stalled encoder thread makes it drop frames;
    the converter's writer must wait instead (with the default, this stall loses frames of the 48)."""
    import time
    import types

    from lerobot.datasets import video_utils
    from PIL import Image

    calls = []

    def fromarray_with_stalls(array):  # the encoder thread converts each frame with Image.fromarray
        calls.append(1)
        if len(calls) % 12 == 0:
            time.sleep(0.25)
        return Image.fromarray(array)

    monkeypatch.setattr(video_utils, "Image", types.SimpleNamespace(fromarray=fromarray_with_stalls))
    root = convert_calvin(calvin_slice / "training", "local/stall", root=tmp_path / "ds", max_episodes=1,
                          progress=False)  # fmt: skip
    episode = LeRobotDataset("local/stall", root=root).meta.episodes.with_format(None)[0]
    for key in ("observation.images.static", "observation.images.gripper"):
        duration = episode[f"videos/{key}/to_timestamp"] - episode[f"videos/{key}/from_timestamp"]
        assert round(duration * 30, 3) == episode["length"] == 48


def test_splits_and_scenes_are_kept_so_abc_to_d_can_be_selected(tmp_path, calvin_slice):
    # A dataset folder with both splits: training = the slice with its two windows assigned to scenes A and C
    # (rewritten scene_info.npy), validation = the slice as recorded (scene D).
    raw = tmp_path / "task_ABC_D"
    shutil.copytree(calvin_slice / "training", raw / "training")
    shutil.copytree(calvin_slice / "training", raw / "validation")
    scene_info = {"calvin_scene_A": [126, 173], "calvin_scene_C": [282, 329]}
    np.save(raw / "training" / "scene_info.npy", scene_info, allow_pickle=True)
    root = convert_calvin(raw, "local/abc_d", root=tmp_path / "ds", split="all", progress=False)
    episodes = json.loads((root / "meta" / "calvin_episodes.json").read_text())
    assert [(e["split"], e["scene"], e["calvin_frames"]) for e in episodes] == [
        ("training", "A", [126, 173]),
        ("training", "C", [282, 329]),
        ("validation", "D", [126, 173]),
        ("validation", "D", [282, 329]),
    ]
    assert sorted(p.name for p in (root / "meta" / "calvin_statistics").iterdir()) == [
        "training.yaml",
        "validation.yaml",
    ]
    full = LeRobotDataset("local/abc_d", root=root)
    columns = full.hf_dataset.with_format(None)[:]
    assert columns["calvin_scene"] == [0] * 48 + [2] * 48 + [3] * 96
    assert columns["calvin_split"] == [0] * 96 + [1] * 96
    train_abc = [e["episode_index"] for e in episodes if e["split"] == "training" and e["scene"] in "ABC"]
    selected = LeRobotDataset("local/abc_d", root=root, episodes=train_abc, video_backend="pyav")
    assert selected.num_episodes == 2 and selected.num_frames == 96
    assert {selected[i]["calvin_scene"].item() for i in (0, 47, 48, 95)} == {0, 2}
    assert selected[50]["task"] == "push the red block to the left"


def test_play_layout_cuts_segments_and_labels_frames(tmp_path, calvin_slice):
    split = calvin_slice / "training"
    plan = plan_episodes("training", split, "play", default_task="play", max_episode_frames=30)
    lengths = [spec.last - spec.first + 1 for _, spec in plan]
    assert lengths == [30, 18, 30, 18]  # two 48-frame segments cut into <= 30-frame episodes
    root = convert_calvin(split, "local/calvin_play", root=tmp_path / "play", layout="play", max_episode_frames=30,
                          absolute_actions=True, max_episodes=2, progress=False)  # fmt: skip
    dataset = LeRobotDataset("local/calvin_play", root=root, video_backend="pyav")
    assert dataset.num_episodes == 2 and dataset.num_frames == 48
    first = np.load(split / "episode_0000126.npz")
    np.testing.assert_array_equal(dataset[0]["action"].numpy(), first["actions"].astype(np.float32))
    assert dataset[0]["task"] == "turn on the green light"
    # Depth is opt-in (the slice keeps it in its first frame only).
    root = convert_calvin(split, "local/calvin_depth", root=tmp_path / "depth", layout="play", max_episode_frames=1,
                          depth=True, max_episodes=1, progress=False)  # fmt: skip
    dataset = LeRobotDataset("local/calvin_depth", root=root, video_backend="pyav")
    np.testing.assert_array_equal(dataset[0]["depth_static"].numpy(), first["depth_static"])


def test_frame_instructions_take_the_latest_starting_window():
    windows = [(0, 63, "open the drawer"), (37, 100, "lift the red block"), (37, 40, "push the button")]
    tasks = frame_instructions(30, 102, windows, "play")
    assert tasks[:7] == ["open the drawer"] * 7  # frames 30..36
    assert tasks[7:11] == ["push the button"] * 4  # 37..40: equal starts -> the later window
    assert tasks[11:71] == ["lift the red block"] * 60  # 41..100, also after "open the drawer" ended at 63
    assert tasks[71:] == ["play", "play"]  # 101, 102: no window


def test_scene_fallback_when_scene_info_is_absent(tmp_path, calvin_slice):
    split = tmp_path / "training"
    (split / "lang_annotations").mkdir(parents=True)
    for name in ("ep_start_end_ids.npy", "lang_annotations/auto_lang_ann.npy"):
        shutil.copy(calvin_slice / "training" / name, split / name)
    assert {spec.scene for _, spec in plan_episodes("training", split, "windows")} == {-1}
    assert {spec.scene for _, spec in plan_episodes("training", split, "windows", default_scene=2)} == {2}


def test_interrupted_conversion_resumes_to_the_same_dataset(tmp_path, calvin_slice, windows_dataset):
    split = calvin_slice / "training"
    root = tmp_path / "resumed"
    convert_calvin(split, "local/r", root=root, max_episodes=1, progress=False)
    assert LeRobotDataset("local/r", root=root).num_episodes == 1
    convert_calvin(split, "local/r", root=root, progress=False)  # continues with the missing episode
    resumed = LeRobotDataset("local/r", root=root, video_backend="pyav")
    _, reference = windows_dataset
    assert resumed.num_episodes == reference.num_episodes and resumed.num_frames == reference.num_frames
    for i in (0, 47, 48, 95):
        assert resumed[i]["task"] == reference[i]["task"]
        torch.testing.assert_close(resumed[i]["action"], reference[i]["action"])
    assert json.loads((root / "conversion_progress.json").read_text())["finalized"]
    assert not (root / ".conversion_checkpoint").exists()
    # Resuming with other options would mix two conversions in one dataset: refused.
    with pytest.raises(CalvinFormatError, match="layout: 'windows' then, 'play' now"):
        convert_calvin(split, "local/r", root=root, layout="play", progress=False)
    with pytest.raises(ConversionInputError, match="does not match this run"):
        convert_calvin(split, "local/r", root=root, fps=10, progress=False)
    # A refused run leaves the dataset as it was (complete, loadable).
    assert LeRobotDataset("local/r", root=root).num_episodes == 2


# Runs a conversion in a child process that dies like SIGKILL (os._exit: no finally, parquet writers left
# open, encoder threads gone) right after LeRobot saved its `kill_after`-th episode.
KILLED_CONVERSION = """
import os, sys
from lerobot_defi.conversions import episode_writer
from lerobot_defi.conversions.calvin import convert_calvin

save, saved = episode_writer._add_episode, []
def save_then_die(dataset, episode):
    save(dataset, episode)
    saved.append(1)
    if len(saved) == int(sys.argv[3]):
        os._exit(9)
episode_writer._add_episode = save_then_die
convert_calvin(sys.argv[1], "local/killed", root=sys.argv[2], layout="play", max_episode_frames=24,
               checkpoint_every=2, progress=False)
"""


@pytest.fixture(scope="module")
def play24_dataset(tmp_path_factory):
    from defi_test_utils import CALVIN_SLICE

    root = convert_calvin(CALVIN_SLICE / "training", "local/play24", root=tmp_path_factory.mktemp("p") / "ds",
                          layout="play", max_episode_frames=24, progress=False)  # fmt: skip
    return LeRobotDataset("local/play24", root=root, video_backend="pyav")


@pytest.mark.parametrize("kill_after", [1, 3])  # before / after the first checkpoint that holds episodes
def test_killed_conversion_resumes_to_the_same_dataset(tmp_path, calvin_slice, play24_dataset, kill_after):
    split, root = calvin_slice / "training", tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CONVERSION, str(split), str(root), str(kill_after)],
        env=env,
        timeout=300,
    )
    assert child.returncode == 9
    progress = json.loads((root / "conversion_progress.json").read_text())
    assert not progress["finalized"] and len(progress["episodes"]) == kill_after - 1
    checkpointed = progress["checkpoint"]["episodes"]
    assert checkpointed == (2 if kill_after == 3 else 0)
    written_after = set(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert written_after - set(progress["checkpoint"]["files"])  # the killed run left an unfinished file

    convert_calvin(split, "local/killed", root=root, layout="play", max_episode_frames=24, checkpoint_every=2,
                   progress=False)  # fmt: skip
    resumed = LeRobotDataset("local/killed", root=root, video_backend="pyav")
    reference = play24_dataset
    assert (
        (resumed.num_episodes, resumed.num_frames)
        == (reference.num_episodes, reference.num_frames)
        == (4, 96)
    )
    # Every non-video column (actions, states, tasks, CALVIN frame ids, indices) is identical.
    assert resumed.hf_dataset.with_format(None)[:] == reference.hf_dataset.with_format(None)[:]
    for i in (0, 24, 47, 48, 95):  # pixels decode identically: same frames through the same encoder
        for key in ("observation.images.static", "observation.images.gripper"):
            torch.testing.assert_close(resumed[i][key], reference[i][key], rtol=0, atol=0)
    for key in ("action", "observation.state", "observation.images.static"):
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_array_equal(resumed.meta.stats[key][stat], reference.meta.stats[key][stat])
    assert json.loads((root / "conversion_progress.json").read_text())["finalized"]


def test_bad_input_names_the_file(tmp_path, calvin_slice):
    with pytest.raises(CalvinFormatError, match="not a CALVIN folder"):
        convert_calvin(tmp_path, "local/x", root=tmp_path / "out")
    broken = tmp_path / "broken"
    shutil.copytree(calvin_slice / "training", broken)
    (broken / "lang_annotations" / "auto_lang_ann.npy").unlink()
    with pytest.raises(CalvinFormatError, match=r"auto_lang_ann\.npy"):
        convert_calvin(broken, "local/x", root=tmp_path / "out")
    shutil.rmtree(broken)
    shutil.copytree(calvin_slice / "training", broken)
    annotations = np.load(broken / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    annotations["info"]["indx"][1] = (282, 400)
    np.save(broken / "lang_annotations" / "auto_lang_ann.npy", annotations, allow_pickle=True)
    with pytest.raises(CalvinFormatError, match=r"window 1 \(282, 400\) is not inside one play segment"):
        convert_calvin(broken, "local/x", root=tmp_path / "out")
    shutil.rmtree(broken)
    shutil.copytree(calvin_slice / "training", broken)
    corrupt = broken / "episode_0000300.npz"
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    with pytest.raises(ConversionInputError, match=r"episode_0000300\.npz is not a readable CALVIN frame"):
        convert_calvin(broken, "local/x", root=tmp_path / "out1", progress=False)
    root = convert_calvin(broken, "local/x", root=tmp_path / "out2", skip_bad=True, progress=False)
    assert LeRobotDataset("local/x", root=root).num_episodes == 1  # window 0 written, window 1 skipped
    bad = json.loads((root / "conversion_progress.json").read_text())["bad"]
    assert list(bad) == ["training/window_000001"] and "episode_0000300.npz" in bad["training/window_000001"]
    frame = dict(np.load(broken / "episode_0000130.npz"))
    frame["rgb_static"] = np.zeros((100, 100, 3), np.uint8)
    np.savez_compressed(broken / "episode_0000130.npz", **frame)
    with pytest.raises(
        ConversionInputError,
        match=r"episode_0000130\.npz: rgb_static is uint8\(100, 100, 3\), expected uint8\(200, 200, 3\)",
    ):
        convert_calvin(broken, "local/x", root=tmp_path / "out3", progress=False)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _rewrite_frame(**changes):
    def rewrite(path):
        frame = dict(np.load(path))
        for key, value in changes.items():
            if value is None:
                del frame[key]
            else:
                frame[key] = value
        np.savez_compressed(path, **frame)

    return rewrite


@pytest.mark.parametrize(
    ("damage", "message", "then"),
    [
        (_truncate, r"episode_0000300\.npz is not a readable CALVIN frame", "skip_bad"),
        (_rewrite_frame(rel_actions=None), r"episode_0000300\.npz lacks \['rel_actions'\]", "fix"),
        (
            _rewrite_frame(rgb_static=np.zeros((100, 100, 3), np.uint8)),
            r"episode_0000300\.npz: rgb_static is uint8\(100, 100, 3\), expected uint8\(200, 200, 3\)",
            "skip_bad",
        ),
        (
            _rewrite_frame(rgb_gripper=np.zeros((84, 84, 3), np.float32)),
            r"episode_0000300\.npz: rgb_gripper is float32\(84, 84, 3\), expected uint8\(84, 84, 3\)",
            "fix",
        ),
    ],
    ids=["truncated_npz", "no_rel_actions", "image_shape", "image_dtype"],
)
def test_a_run_stopped_by_bad_input_is_incomplete_until_rerun(
    tmp_path, calvin_slice, windows_dataset, damage, message, then
):
    broken, root = tmp_path / "broken", tmp_path / "ds"
    shutil.copytree(calvin_slice / "training", broken)
    frame = broken / "episode_0000300.npz"  # in window 1 of 2
    original = frame.read_bytes()
    damage(frame)
    with pytest.raises(ConversionInputError, match=message) as stopped:
        convert_calvin(broken, "local/x", root=root, progress=False)
    assert "1 of 2 episodes written" in str(stopped.value) and "--skip_bad" in str(stopped.value)
    progress = assert_stopped_incomplete("local/x", root, written=1, planned=2)
    assert "episode_0000300.npz" in progress["error"]
    if then == "fix":  # the same command after the input is fixed completes the dataset
        frame.write_bytes(original)
        convert_calvin(broken, "local/x", root=root, progress=False)
        completed = LeRobotDataset("local/x", root=root)
        _, reference = windows_dataset
        assert completed.hf_dataset.with_format(None)[:] == reference.hf_dataset.with_format(None)[:]
    else:
        convert_calvin(broken, "local/x", root=root, skip_bad=True, progress=False)
        completed = LeRobotDataset("local/x", root=root)
        assert completed.num_episodes == 1 and completed.num_frames == 48
    progress = json.loads((root / "conversion_progress.json").read_text())
    assert progress["finalized"] and "error" not in progress
    assert list(progress["bad"]) == ([] if then == "fix" else ["training/window_000001"])


def test_cli_bad_input_is_one_line_after_the_progress_bar(tmp_path, calvin_slice, capfd):
    """Exit code 2 (as for vpp and oxe), the error on its own line after the finished bar, no encoder banners."""
    broken = tmp_path / "broken"
    shutil.copytree(calvin_slice / "training", broken)
    _truncate(broken / "episode_0000300.npz")
    args = [f"--raw_dir={broken}", "--repo_id=local/cli_bad", f"--root={tmp_path / 'ds'}"]
    assert main([*args, "--num_workers=0"]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert (
        lines[-1].startswith("error: ") and "episode_0000300.npz is not a readable CALVIN frame" in lines[-1]
    )
    assert "1 of 2 episodes written" in lines[-1] and "--skip_bad" in lines[-1]
    assert "calvin windows:" in lines[-2]  # the bar, finished on its own line
    assert "Svt[" not in err and "Traceback" not in err and "torchcodec" not in err


def test_cli_writes_a_dataset(tmp_path, calvin_slice, capsys):
    assert (
        main(
            [
                f"--raw_dir={calvin_slice / 'training'}",
                "--repo_id=local/cli",
                f"--root={tmp_path / 'cli'}",
                "--num_workers=1",
                "--max_episodes=1",
            ]
        )
        == 0
    )
    assert LeRobotDataset("local/cli", root=tmp_path / "cli").num_frames == 48
    assert main([f"--raw_dir={tmp_path}", "--repo_id=local/none", f"--root={tmp_path / 'none'}"]) == 2
    assert "not a CALVIN folder" in capsys.readouterr().err


def test_defi_training_step_on_the_converted_dataset(windows_dataset):
    from defi_test_utils import tiny_config
    from lerobot.configs.types import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    from lerobot_defi.policy.modeling_defi import DeFIPolicy
    from lerobot_defi.policy.processor_defi import make_defi_pre_post_processors

    root, _ = windows_dataset
    config = tiny_config()
    features = dataset_to_policy_features(LeRobotDataset("local/calvin_windows", root=root).meta.features)
    config.input_features = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
    config.output_features = {"action": features["action"]}
    dataset = LeRobotDataset(
        "local/calvin_windows",
        root=root,
        video_backend="pyav",
        delta_timestamps={"action": [i / 30 for i in range(config.chunk_size)]},
    )
    batch = torch.utils.data.default_collate([dataset[i] for i in (0, 30, 60)])
    pre, _ = make_defi_pre_post_processors(config, dataset_stats=dataset.meta.stats)
    assert config.binarize_gripper is True  # decided from the data: CALVIN's gripper action is exactly -1/+1
    torch.manual_seed(0)
    policy = DeFIPolicy(config)
    loss, info = policy.forward(pre(batch))
    loss.backward()
    assert torch.isfinite(loss) and info["action_loss"] > 0
