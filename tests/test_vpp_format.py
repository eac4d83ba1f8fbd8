"""The VPP format: annotation parsing (fields, frame counts, cameras, latent files) on the real samples in
tests/data/vpp_slice and broken copies of them."""

import json
import shutil

import numpy as np
import pytest
from defi_test_utils import TESTS_DIR
from lerobot_defi.conversions.vpp_format import (
    VPPFormatError,
    annotation_files,
    find_annotations,
    latent_file,
    latent_sidecar_path,
    read_annotation,
    resolve_latent,
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
    with pytest.raises(VPPFormatError, match=r"annotation not found.*--raw_dir"):
        find_annotations(VPP_SLICE)


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


def test_latent_only_reading_needs_no_videos(broken_bridge):
    """The GFDM trainer reads annotations for text, frame count and latents; the videos may be absent."""
    root, rewrite = broken_bridge
    shutil.rmtree(root / "videos")
    json_path = rewrite(videos=None)
    annotation = read_annotation(json_path, root, "val", videos=False)
    assert annotation.num_frames == 24 and annotation.camera_names == [] and annotation.video_paths == []
    assert annotation.latent_paths == [root / "latent_videos_svd" / "val" / "10" / "0.pt"]
    with pytest.raises(VPPFormatError, match=r"field 'videos' must be a non-empty list"):
        read_annotation(json_path, root, "val")


def test_latent_folder_layout_and_fallback_folder_name(tmp_path):
    assert latent_file(tmp_path, "observation.images.static", 7) == tmp_path / "static" / "episode_000007.pt"
    assert latent_file(tmp_path, "static", 7) == latent_file(tmp_path, "observation.images.static", 7)
    assert latent_sidecar_path(tmp_path, "rgb", 0) == tmp_path / "vpp_latents" / "rgb" / "episode_000000.pt"
    bridge = VPP_SLICE / "bridge"
    found = bridge / "latent_videos_svd" / "val" / "10" / "0.pt"
    assert resolve_latent(bridge, "latent_videos/val/10/0.pt") == found
    assert resolve_latent(bridge, "latent_videos_svd/val/10/0.pt") == found
    assert resolve_latent(bridge, "latent_videos/val/11/0.pt") is None
    assert [p.stem for p in annotation_files(VPP_SLICE / "sthv2", "val")] == ["872", "1113"]
    assert annotation_files(VPP_SLICE / "sthv2", "train") == []
