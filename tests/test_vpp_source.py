"""Reading VPP-format annotations and videos: real samples (tests/data/vpp_slice) and broken copies of them."""

import json
import shutil

import numpy as np
import pytest
from defi_test_utils import SHARED_DATA, TESTS_DIR
from lerobot_defi.conversions.vpp_source import (
    VPPFormatError,
    find_annotations,
    plan_vpp_conversion,
    read_annotation,
    read_video,
    read_vpp_episode,
    video_fps,
)

VPP_SLICE = TESTS_DIR / "data" / "vpp_slice"


def _annotation(dataset: str, annotation_id: str, root=VPP_SLICE):
    return read_annotation(
        root / dataset / "annotation" / "val" / f"{annotation_id}.json", root / dataset, "val"
    )


def test_bridge_annotation_fields_and_latent_fallback():
    annotation = _annotation("bridge", "10")
    assert annotation.instruction == "put pot or pan from sink into drying rack"
    assert annotation.num_frames == 24  # len(state)
    assert annotation.camera_names == ["rgb"]
    assert annotation.actions.shape == (23, 7) and annotation.states.shape == (24, 7)
    # The JSON names latent_videos/val/10/0.pt; the file lives under latent_videos_svd/ (VPP loader fallback).
    assert annotation.declared_latent_paths == ["latent_videos/val/10/0.pt"]
    assert annotation.latent_paths == [VPP_SLICE / "bridge" / "latent_videos_svd" / "val" / "10" / "0.pt"]
    raw = json.loads((VPP_SLICE / "bridge" / "annotation" / "val" / "10.json").read_text())
    np.testing.assert_allclose(annotation.actions, np.asarray(raw["action"], dtype=np.float32))


def test_sthv2_annotation_uses_video_length_and_reports_missing_latents():
    annotation = _annotation("sthv2", "872")
    assert annotation.instruction == "opening bottle"
    assert annotation.num_frames == 39
    assert annotation.camera_names == ["camera0"]  # videos/872.webm: the stem is the id, not a camera name
    assert annotation.actions is None and annotation.states is None
    assert annotation.latent_paths == [None]


def test_find_annotations_orders_numerically_and_checks_splits():
    assert [p.stem for _, p in find_annotations(VPP_SLICE / "sthv2")] == ["872", "1113"]
    with pytest.raises(VPPFormatError, match=r"no split folder \['train'\]; found \['val'\]"):
        find_annotations(VPP_SLICE / "sthv2", ["train"])
    with pytest.raises(VPPFormatError, match=r"annotation not found.*--raw-dir"):
        find_annotations(VPP_SLICE)


@pytest.mark.parametrize(
    ("dataset", "annotation_id", "frames", "size", "fps"),
    [
        ("bridge", "10", 24, (480, 640), 3),
        ("rt1", "6", 29, (256, 320), 3),
        ("sthv2", "1113", 55, (240, 427), 12),
    ],
)
def test_video_frame_counts_sizes_and_rates_of_real_samples(dataset, annotation_id, frames, size, fps):
    annotation = _annotation(dataset, annotation_id)
    assert annotation.num_frames == frames
    video = read_video(annotation.video_paths[0], frames, None)
    assert video.shape == (frames, *size, 3) and video.dtype == np.uint8
    assert round(video_fps(annotation.video_paths[0])) == fps
    resized = read_video(annotation.video_paths[0], frames, (256, 256))
    assert resized.shape == (frames, 256, 256, 3)
    # Area resize keeps the picture: per-channel means agree within a few grey levels.
    np.testing.assert_allclose(resized.mean(axis=(0, 1, 2)), video.mean(axis=(0, 1, 2)), atol=3)


def test_episode_frames_pad_the_last_action():
    annotation = _annotation("rt1", "6")
    plan = plan_vpp_conversion(VPP_SLICE / "rt1", annotation)
    assert plan.fps == 3 and plan.action_dim == 7 and plan.state_dim == 7
    frames = read_vpp_episode(plan, annotation)
    assert frames["observation.images.rgb"].shape == (29, 256, 256, 3)
    assert frames["action"].shape == (29, 7)
    np.testing.assert_array_equal(frames["action"][:28], annotation.actions)
    np.testing.assert_array_equal(frames["action"][28], annotation.actions[27])
    assert frames["task"] == ["pick brown chip bag"] * 29


@pytest.fixture
def broken_bridge(tmp_path):
    """A writable copy of the bridge slice plus a helper that rewrites annotation 10."""
    root = tmp_path / "bridge"
    shutil.copytree(VPP_SLICE / "bridge", root)
    (root / "videos" / "val" / "10" / "state.npy").unlink()  # else it stands in for a missing 'state'
    json_path = root / "annotation" / "val" / "10.json"

    def rewrite(**changes):
        data = json.loads(json_path.read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        json_path.write_text(json.dumps(data))
        return json_path

    return root, rewrite


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"texts": None}, r"10\.json: field 'texts' must be a non-empty list"),
        ({"videos": None}, r"10\.json: field 'videos' must be a non-empty list"),
        ({"videos": [{"path": "x.mp4"}]}, r"10\.json: field 'videos\[0\]' has no 'video_path'"),
        (
            {"videos": [{"video_path": "videos/val/10/missing.mp4"}]},
            r"videos\[0\]\.video_path -> .*missing\.mp4 does not exist",
        ),
        (
            {"state": None, "continuous_gripper_state": None},
            r"10\.json: missing field 'state' \(per-frame list\) or 'video_length'",
        ),
        ({"action": [[0.0] * 7] * 5}, r"10\.json: field 'action' has 5 rows; expected 24 or 23"),
        (
            {"state": [[0.0] * 7, [0.0] * 3]},
            r"10\.json: field 'state' is not a list of equal-length number lists",
        ),
        (
            {"latent_videos": [{"file": "a.pt"}]},
            r"10\.json: field 'latent_videos\[0\]' has no 'latent_video_path'",
        ),
    ],
)
def test_bad_annotations_name_file_and_field(broken_bridge, changes, message):
    root, rewrite = broken_bridge
    json_path = rewrite(**changes)
    with pytest.raises(VPPFormatError, match=message):
        read_annotation(json_path, root, "val")


def test_state_npy_stands_in_for_a_missing_state_field(tmp_path):
    root = tmp_path / "bridge"
    shutil.copytree(VPP_SLICE / "bridge", root)
    json_path = root / "annotation" / "val" / "10.json"
    data = json.loads(json_path.read_text())
    del data["state"]
    json_path.write_text(json.dumps(data))
    annotation = read_annotation(json_path, root, "val")
    expected = np.load(root / "videos" / "val" / "10" / "state.npy")
    assert annotation.states.shape == (24, 8) and annotation.num_frames == 24
    np.testing.assert_allclose(annotation.states, expected.astype(np.float32))


def test_video_shorter_than_the_annotation_is_reported(broken_bridge):
    root, rewrite = broken_bridge
    json_path = rewrite(state=[[0.0] * 7] * 30, action=None)
    annotation = read_annotation(json_path, root, "val")
    plan = plan_vpp_conversion(root, annotation)
    with pytest.raises(
        VPPFormatError, match=r"rgb\.mp4: the video has 24 frames but the annotation declares 30"
    ):
        read_vpp_episode(plan, annotation)


def test_unreadable_video_is_reported(broken_bridge):
    root, _ = broken_bridge
    (root / "videos" / "val" / "10" / "rgb.mp4").write_bytes(b"not a video")
    annotation = read_annotation(root / "annotation" / "val" / "10.json", root, "val")
    with pytest.raises(VPPFormatError, match=r"rgb\.mp4: cannot decode the video"):
        read_video(annotation.video_paths[0], annotation.num_frames, (256, 256))


@pytest.mark.skipif(not (SHARED_DATA / "vpp_samples").is_dir(), reason="shared/data is not present")
def test_every_shared_sample_reads_with_the_declared_frame_count():
    counts = {}
    for dataset in ("bridge", "rt1", "sthv2"):
        root = SHARED_DATA / "vpp_samples" / dataset
        for split, path in find_annotations(root):
            annotation = read_annotation(path, root, split)
            video = read_video(annotation.video_paths[0], annotation.num_frames, (64, 64))
            counts[f"{dataset}/{annotation.annotation_id}"] = len(video)
    assert counts == {
        "bridge/2": 40, "bridge/8": 43, "bridge/10": 24, "bridge/14": 37,
        "rt1/1": 57, "rt1/6": 29, "rt1/8": 66, "rt1/10": 54,
        "sthv2/872": 39, "sthv2/893": 55, "sthv2/1023": 47, "sthv2/1113": 55,
        "sthv2/1870": 54, "sthv2/2100": 69, "sthv2/2446": 49, "sthv2/2645": 53,
    }  # fmt: skip
