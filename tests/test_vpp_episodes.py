"""VPP annotations as LeRobot episodes: video decoding, the dataset schema, episode frames (real samples in
tests/data/vpp_slice and broken copies of them)."""

import numpy as np
import pytest
from defi_test_utils import SHARED_DATA, TESTS_DIR
from lerobot_defi.conversions.vpp_episodes import (
    plan_vpp_conversion,
    read_video,
    read_vpp_episode,
    video_fps,
)
from lerobot_defi.conversions.vpp_format import VPPFormatError, find_annotations, read_annotation

VPP_SLICE = TESTS_DIR / "data" / "vpp_slice"


def _annotation(dataset: str, annotation_id: str, root=VPP_SLICE):
    return read_annotation(
        root / dataset / "annotation" / "val" / f"{annotation_id}.json", root / dataset, "val"
    )


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
