"""VPP folder -> LeRobotDataset -> VPP folder, on the real samples in tests/data/vpp_slice."""

import json
import shutil

import numpy as np
import pytest
import torch
from defi_test_utils import TESTS_DIR, assert_stopped_incomplete, error_line
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot_defi.conversions.cli import main as convert_cli
from lerobot_defi.conversions.conversion_progress import PROGRESS_FILE
from lerobot_defi.conversions.vpp import convert_vpp, export_vpp
from lerobot_defi.conversions.vpp_episodes import read_video
from lerobot_defi.conversions.vpp_format import read_annotation

VPP_SLICE = TESTS_DIR / "data" / "vpp_slice"


def _frames_of(dataset: LeRobotDataset, key: str, episode: int) -> np.ndarray:
    start = int(dataset.meta.episodes[episode]["dataset_from_index"])
    stop = int(dataset.meta.episodes[episode]["dataset_to_index"])
    return np.stack([(dataset[i][key].numpy().transpose(1, 2, 0) * 255).round() for i in range(start, stop)])


def test_cli_converts_bridge_with_actions_states_and_latents(tmp_path, capsys):
    root = tmp_path / "bridge_ds"
    rc = convert_cli(
        ["vpp", f"--raw_dir={VPP_SLICE / 'bridge'}", "--repo_id=test/vpp_bridge", f"--root={root}",
         "--export_latents=true"]
    )  # fmt: skip
    assert rc == 0
    assert "1 episodes, 24 frames" in capsys.readouterr().out
    dataset = LeRobotDataset("test/vpp_bridge", root=root, video_backend="pyav")
    assert dataset.meta.fps == 3
    assert dataset.meta.video_keys == ["observation.images.rgb"]
    assert list(dataset.meta.features["observation.images.rgb"]["shape"]) == [256, 256, 3]
    raw = json.loads((VPP_SLICE / "bridge" / "annotation" / "val" / "10.json").read_text())
    actions = torch.stack([dataset[i]["action"] for i in range(24)]).numpy()
    np.testing.assert_allclose(actions[:23], np.asarray(raw["action"], dtype=np.float32))
    np.testing.assert_allclose(actions[23], actions[22])  # last action repeated for the final frame
    states = torch.stack([dataset[i]["observation.state"] for i in range(24)]).numpy()
    np.testing.assert_allclose(states, np.asarray(raw["state"], dtype=np.float32))
    assert dataset[5]["task"] == raw["texts"][0] == "put pot or pan from sink into drying rack"
    # Pixels survive resize + AV1 encoding: mean absolute error of a few grey levels.
    source = read_video(VPP_SLICE / "bridge" / "videos" / "val" / "10" / "rgb.mp4", 24, (256, 256)).astype(
        float
    )
    assert np.abs(_frames_of(dataset, "observation.images.rgb", 0) - source).mean() < 6
    latent = root / "vpp_latents" / "rgb" / "episode_000000.pt"
    assert (
        latent.read_bytes()
        == (VPP_SLICE / "bridge" / "latent_videos_svd" / "val" / "10" / "0.pt").read_bytes()
    )
    assert torch.load(latent, weights_only=True).shape == (24, 4, 32, 32)


def test_sthv2_frame_counts_from_webm_and_missing_latents_are_reported(tmp_path):
    report = convert_vpp(
        VPP_SLICE / "sthv2", "test/sthv2", root=tmp_path / "ds", progress=False, export_latents=True
    )
    assert report.total_episodes == 2 and report.total_frames == 39 + 55
    assert len(report.missing_latents) == 2 and report.exported_latents == 0
    assert any("latent_videos_svd/val/872/0.pt" in key for key in report.missing_latents)
    dataset = LeRobotDataset("test/sthv2", root=tmp_path / "ds", video_backend="pyav")
    assert dataset.meta.fps == 12
    assert "action" not in dataset.meta.features and "observation.state" not in dataset.meta.features
    assert dataset.meta.video_keys == ["observation.images.camera0"]
    assert [int(e["length"]) for e in dataset.meta.episodes] == [39, 55]
    assert dataset[39]["task"] == "pushing box from left to right"


def test_bad_annotation_stops_or_is_skipped(tmp_path, capsys):
    raw = tmp_path / "sthv2"
    shutil.copytree(VPP_SLICE / "sthv2", raw)
    bad = raw / "annotation" / "val" / "1113.json"
    data = json.loads(bad.read_text())
    data["video_length"] = 80  # the webm has 55 frames
    bad.write_text(json.dumps(data))
    args = ["vpp", f"--raw_dir={raw}", "--repo_id=test/bad", f"--root={tmp_path / 'ds'}"]
    assert convert_cli(args) == 2
    err = capsys.readouterr().err
    assert "1113.webm: the video has 55 frames but the annotation declares 80" in err and "--skip_bad" in err
    # The episode before the bad one was saved; the dataset is marked incomplete; a re-run with --skip_bad=true completes.
    assert convert_cli([*args, "--skip_bad=true"]) == 0
    out = capsys.readouterr().out
    assert "1 episodes, 39 frames" in out and "skipped val/1113" in out
    progress = json.loads((tmp_path / "ds" / PROGRESS_FILE).read_text())
    assert (
        progress["episodes"] == ["val/872"]
        and list(progress["bad"]) == ["val/1113"]
        and progress["finalized"]
    )


def _sthv2_with_four_episodes(tmp_path):
    """sthv2's two samples, each twice (872, 873, 1113, 1114): four annotations, each with its own webm."""
    raw = tmp_path / "sthv2"
    shutil.copytree(VPP_SLICE / "sthv2", raw)
    for source, copy in (("872", "873"), ("1113", "1114")):
        data = json.loads((raw / "annotation" / "val" / f"{source}.json").read_text())
        video = raw / data["videos"][0]["video_path"]
        shutil.copyfile(video, video.with_name(f"{copy}{video.suffix}"))
        data["videos"][0]["video_path"] = data["videos"][0]["video_path"].replace(source, copy)
        (raw / "annotation" / "val" / f"{copy}.json").write_text(json.dumps(data))
    return raw


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_bad_video_after_the_first_leaves_an_incomplete_dataset_until_rerun(tmp_path, capsys, damage):
    raw = _sthv2_with_four_episodes(tmp_path)
    video = raw / "videos" / "1113.webm"  # the third annotation's
    original = video.read_bytes()
    if damage == "missing":
        video.unlink()
    else:
        video.write_bytes(original[:200])
    root = tmp_path / "ds"
    args = ["vpp", f"--raw_dir={raw}", "--repo_id=test/four", f"--root={root}", "--image_size=[32,32]"]
    assert convert_cli(args) == 2
    err = error_line(capsys.readouterr().err)
    assert "1113" in err and "2 of 4 episodes written" in err
    progress = assert_stopped_incomplete("test/four", root, written=2, planned=4)
    assert "val/1113" in progress["error"]
    if damage == "missing":  # fixed input: the same command completes the dataset
        video.write_bytes(original)
        assert convert_cli(args) == 0
        assert "4 episodes, 188 frames (2 written now, 2 already there" in capsys.readouterr().out
    else:
        assert convert_cli([*args, "--skip_bad=true"]) == 0
        assert (
            "3 episodes, 133 frames (1 written now, 2 already there, 1 skipped as bad"
            in capsys.readouterr().out
        )
    assert json.loads((root / PROGRESS_FILE).read_text())["finalized"]
    LeRobotDataset("test/four", root=root)


def test_corrupt_video_in_the_first_annotation_is_one_line_or_skipped(tmp_path, capsys):
    """The schema is planned from the first annotation's video: a corrupt one must not end in a decoder
    traceback but read like any bad video, and --skip_bad=true must plan from the next annotation."""
    raw = tmp_path / "sthv2"
    shutil.copytree(VPP_SLICE / "sthv2", raw)
    (raw / "videos" / "872.webm").write_bytes(b"not a video")
    args = ["vpp", f"--raw_dir={raw}", "--repo_id=test/first", f"--root={tmp_path / 'ds'}"]
    assert convert_cli(args) == 2
    err = error_line(capsys.readouterr().err)
    assert "872.webm: cannot decode the video" in err and "[source episode val/872]" in err
    assert "--skip_bad" in err
    assert not (tmp_path / "ds").exists()  # nothing written
    assert convert_cli([*args, "--skip_bad=true"]) == 0
    out = capsys.readouterr().out
    assert "1 episodes, 55 frames" in out and "skipped val/872: " in out and "cannot decode the video" in out


def test_max_episodes_then_resume_appends_the_rest(tmp_path):
    root = tmp_path / "ds"
    first = convert_vpp(VPP_SLICE / "sthv2", "test/resume", root=root, max_episodes=1, progress=False)
    assert first.written == ["val/872"] and first.total_frames == 39
    second = convert_vpp(VPP_SLICE / "sthv2", "test/resume", root=root, progress=False)
    assert second.already_done == ["val/872"] and second.written == ["val/1113"]
    assert second.total_episodes == 2 and second.total_frames == 94
    third = convert_vpp(VPP_SLICE / "sthv2", "test/resume", root=root, progress=False)
    assert third.written == [] and third.total_episodes == 2
    dataset = LeRobotDataset("test/resume", root=root, video_backend="pyav")
    assert [dataset[0]["task"], dataset[39]["task"]] == ["opening bottle", "pushing box from left to right"]


def test_several_cameras_per_episode_become_several_video_keys(tmp_path):
    raw = tmp_path / "two_cams"
    shutil.copytree(VPP_SLICE / "bridge", raw)
    episode_dir = raw / "videos" / "val" / "10"
    flipped = read_video(episode_dir / "rgb.mp4", 24, (128, 128))[:, :, ::-1]  # a second, different view
    from lerobot_defi.video_writer import write_video

    write_video(episode_dir / "gripper.mp4", flipped, fps=3)
    json_path = raw / "annotation" / "val" / "10.json"
    data = json.loads(json_path.read_text())
    data["videos"].append({"video_path": "videos/val/10/gripper.mp4"})
    json_path.write_text(json.dumps(data))
    report = convert_vpp(raw, "test/cams", root=tmp_path / "ds", image_size=(64, 64), progress=False)
    assert report.total_frames == 24
    dataset = LeRobotDataset("test/cams", root=tmp_path / "ds", video_backend="pyav")
    assert dataset.meta.video_keys == ["observation.images.rgb", "observation.images.gripper"]
    rgb, gripper = dataset[3]["observation.images.rgb"], dataset[3]["observation.images.gripper"]
    assert rgb.shape == gripper.shape == (3, 64, 64)
    # The second camera is the mirrored first (up to codec error), not a copy of it.
    assert (rgb.flip(-1) - gripper).abs().mean() < 0.03 < (rgb - gripper).abs().mean()


def test_export_round_trip_reads_back_with_the_vpp_reader(tmp_path):
    root = tmp_path / "ds"
    convert_vpp(
        VPP_SLICE / "bridge", "test/rt", root=root, image_size=(128, 128), export_latents=True, progress=False
    )
    out = tmp_path / "vpp_out"
    assert convert_cli(["vpp", "export", "--repo_id=test/rt", f"--root={root}", f"--output_dir={out}",
                        "--split=val"]) == 0  # fmt: skip
    annotation = read_annotation(out / "annotation" / "val" / "0.json", out, "val")
    original = read_annotation(
        VPP_SLICE / "bridge" / "annotation" / "val" / "10.json", VPP_SLICE / "bridge", "val"
    )
    assert annotation.instruction == original.instruction
    assert annotation.num_frames == 24 and annotation.camera_names == ["rgb"]
    np.testing.assert_allclose(annotation.actions[:23], original.actions)
    np.testing.assert_allclose(annotation.states, original.states)
    exported = read_video(annotation.video_paths[0], 24, None).astype(float)
    assert exported.shape == (24, 128, 128, 3)
    source = read_video(original.video_paths[0], 24, (128, 128)).astype(float)
    assert np.abs(exported - source).mean() < 8
    assert annotation.latent_paths[0].read_bytes() == original.latent_paths[0].read_bytes()
    # A second export run finds the finished episode and leaves it alone.
    report = export_vpp("test/rt", out, root=root, split="val", progress=False)
    assert report.skipped_existing == [0] and report.written == []
    # And the exported folder converts again to the same actions.
    again = convert_vpp(out, "test/rt2", root=tmp_path / "ds2", progress=False)
    assert again.total_frames == 24
    actions = torch.stack([LeRobotDataset("test/rt2", root=tmp_path / "ds2")[i]["action"] for i in range(24)])
    np.testing.assert_allclose(actions[:23].numpy(), original.actions)


def test_push_to_hub_is_called_after_latents_are_in_place(tmp_path, monkeypatch):
    calls = []

    def fake_push(self, **kwargs):
        calls.append(
            (self.root, sorted(p.name for p in (self.root / "vpp_latents" / "rgb").iterdir()), kwargs)
        )

    monkeypatch.setattr(LeRobotDataset, "push_to_hub", fake_push)
    convert_vpp(VPP_SLICE / "bridge", "test/push", root=tmp_path / "ds", export_latents=True, push_to_hub=True,
                private=True, image_size=(64, 64), progress=False)  # fmt: skip
    assert calls == [(tmp_path / "ds", ["episode_000000.pt"], {"private": True})]
