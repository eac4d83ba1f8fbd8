"""OXE RLDS -> LeRobotDataset: a fractal20220817_data fixture in the published schema, and the real Bridge slice.

The fractal fixture's features.json is rendered from the TFDS catalog table of fractal20220817_data 0.1.0
(see rlds_fixture_utils); its records are encoded with the protobuf library.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from defi_test_utils import TESTS_DIR, assert_stopped_incomplete, error_line
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot_defi.conversions.cli import main as convert_cli
from lerobot_defi.conversions.oxe import convert_oxe
from lerobot_defi.conversions.oxe_datasets import (
    GIDM_MIXTURE_WEIGHTS,
    OXE_DATASETS,
    UnknownOXEDatasetError,
    canonical_name,
    lookup,
)
from lerobot_defi.conversions.rlds_reader import index_tfrecord
from rlds_fixture_utils import (
    catalog_to_features_json,
    fractal_episode,
    fractal_features_json,
    jpeg_bytes,
    serialize_example,
    write_builder_dir,
)

BRIDGE_SLICE = TESTS_DIR / "data" / "oxe_bridge_slice" / "bridge_dataset" / "1.0.0"

pytest.importorskip(
    "google.protobuf", reason="the fixture's tf.train.Example records are encoded with protobuf"
)


def test_table_covers_every_dataset_of_the_gidm_mixture():
    assert len(GIDM_MIXTURE_WEIGHTS) == 30  # docs/method.md §3.3: 26 robot datasets + ego4d_split_1..4
    for name in GIDM_MIXTURE_WEIGHTS:
        row = lookup(name)
        assert row.primary_image.startswith("observation/"), name
        assert row.control_frequency_hz > 0, name
        assert row.language is not None, name
    assert lookup("austin_buds") is OXE_DATASETS["austin_buds_dataset_converted_externally_to_rlds"]
    assert canonical_name("bridge_oxe") == "bridge"
    with pytest.raises(UnknownOXEDatasetError, match=r"unknown OXE dataset 'my_robot'.*Known: austin_buds"):
        lookup("my_robot")


def _fractal_dir(tmp_path):
    episodes = [
        fractal_episode(4, "pick coke can", seed=1),
        fractal_episode(3, "", seed=2),  # no language: skipped by design
        fractal_episode(5, "move apple near sponge", seed=3),
    ]
    records = [serialize_example(e) for e in episodes]
    builder_dir = write_builder_dir(
        tmp_path / "raw",
        "fractal20220817_data",
        "0.1.0",
        fractal_features_json(),
        {"train": [records[:2], records[2:]]},
    )
    return builder_dir, episodes


def test_fractal_fixture_converts_with_standard_keys(tmp_path):
    builder_dir, episodes = _fractal_dir(tmp_path)
    report = convert_oxe(builder_dir, "test/fractal", root=tmp_path / "ds", progress=False)
    assert report.total_episodes == 2 and report.total_frames == 9
    assert list(report.skipped) == ["fractal20220817_data-train.tfrecord-00000-of-00002@" + str(
        index_tfrecord(builder_dir / "fractal20220817_data-train.tfrecord-00000-of-00002")[1].offset
    )]  # fmt: skip
    dataset = LeRobotDataset("test/fractal", root=tmp_path / "ds", video_backend="pyav")
    assert dataset.meta.fps == 3  # RT-1 control frequency
    assert dataset.meta.robot_type == "fractal20220817_data"
    assert list(dataset.meta.features["observation.images.primary"]["shape"]) == [256, 320, 3]
    assert "observation.images.wrist" not in dataset.meta.features
    assert dataset.meta.features["action"]["names"][:3] == [
        "world_vector.0",
        "world_vector.1",
        "world_vector.2",
    ]
    # action = world_vector (3) + rotation_delta (3) + gripper_closedness_action (1), per step
    raw = episodes[2]
    expected_action = np.concatenate(
        [np.asarray(raw[f"steps/action/{k}"]).reshape(5, -1) for k in
         ("world_vector", "rotation_delta", "gripper_closedness_action")], axis=1
    )  # fmt: skip
    expected_state = np.concatenate(
        [
            np.asarray(raw[f"steps/observation/{k}"]).reshape(5, -1)
            for k in ("base_pose_tool_reached", "gripper_closed")
        ],
        axis=1,
    )
    actions = torch.stack([dataset[i]["action"] for i in range(4, 9)]).numpy()
    states = torch.stack([dataset[i]["observation.state"] for i in range(4, 9)]).numpy()
    np.testing.assert_allclose(actions, expected_action, rtol=1e-6)
    np.testing.assert_allclose(states, expected_state, rtol=1e-6)
    assert [dataset[0]["task"], dataset[8]["task"]] == ["pick coke can", "move apple near sponge"]
    # Blue channel of the fixture images is 20 + 20 * step.
    blue = [float(dataset[4 + t]["observation.images.primary"][2].mean()) * 255 for t in range(5)]
    np.testing.assert_allclose(blue, [20, 40, 60, 80, 100], atol=4)


def test_cli_converts_the_real_bridge_slice_and_resumes(tmp_path, capsys):
    root = tmp_path / "ds"
    args = ["oxe", f"--raw_dir={BRIDGE_SLICE}", "--repo_id=test/bridge", f"--root={root}"]
    assert convert_cli([*args, "--max_episodes=1"]) == 0
    assert "1 episodes, 10 frames" in capsys.readouterr().out
    assert convert_cli([*args, "--num_workers=1"]) == 0
    assert "2 episodes, 20 frames (1 written now, 1 already there" in capsys.readouterr().out
    dataset = LeRobotDataset("test/bridge", root=root, video_backend="pyav")
    assert dataset.meta.fps == 5
    assert dataset.meta.video_keys == ["observation.images.primary"]
    assert list(dataset.meta.features["observation.images.primary"]["shape"]) == [64, 64, 3]
    assert dataset[0]["task"] == "put cup from counter or drying rack into sink"
    assert dataset[0]["action"].shape == (7,) and dataset[0]["observation.state"].shape == (7,)
    assert convert_cli([*args, "--split=val", "--overwrite=true"]) == 0
    assert "1 episodes, 10 frames" in capsys.readouterr().out


def test_unknown_dataset_name_and_renamed_folder(tmp_path, capsys):
    renamed = tmp_path / "my_copy" / "1.0.0"
    shutil.copytree(BRIDGE_SLICE, renamed)
    info = json.loads((renamed / "dataset_info.json").read_text())
    info["name"] = "my_copy"
    (renamed / "dataset_info.json").write_text(json.dumps(info))
    for shard in renamed.glob("bridge_dataset-*"):
        shard.rename(renamed / shard.name.replace("bridge_dataset", "my_copy"))
    args = ["oxe", f"--raw_dir={renamed}", "--repo_id=test/renamed", f"--root={tmp_path / 'ds'}"]
    assert convert_cli(args) == 2
    assert "unknown OXE dataset 'my_copy'" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()  # nothing written before the plan is known to work
    assert convert_cli([*args, "--dataset_name=bridge_dataset", "--max_episodes=1"]) == 0


def test_corrupt_record_and_truncated_shard_with_and_without_skip_bad(tmp_path, capsys):
    builder_dir, _ = _fractal_dir(tmp_path)
    first_shard = builder_dir / "fractal20220817_data-train.tfrecord-00000-of-00002"
    second_shard = builder_dir / "fractal20220817_data-train.tfrecord-00001-of-00002"
    data = bytearray(first_shard.read_bytes())
    data[12 + 500] ^= 0x55  # a payload byte of the first record
    first_shard.write_bytes(bytes(data))
    args = ["oxe", f"--raw_dir={builder_dir}", "--repo_id=test/corrupt", f"--root={tmp_path / 'ds'}"]
    assert convert_cli(args) == 2
    err = capsys.readouterr().err
    assert "00000-of-00002: data CRC mismatch in the record at byte 0" in err and "--skip_bad" in err
    assert convert_cli([*args, "--overwrite=true", "--skip_bad=true"]) == 0
    out = capsys.readouterr().out
    assert (
        "1 episodes, 5 frames" in out
        and "skipped fractal20220817_data-train.tfrecord-00000-of-00002@0" in out
    )

    second_shard.write_bytes(second_shard.read_bytes()[:100])
    assert convert_cli([*args, "--overwrite=true"]) == 2
    assert "00001-of-00002: record at byte 0 claims" in capsys.readouterr().err
    assert convert_cli([*args, "--overwrite=true", "--skip_bad=true"]) == 0
    assert "0 episodes" in capsys.readouterr().out


def test_flipped_byte_in_record_4_leaves_an_incomplete_dataset_until_rerun(tmp_path, capsys):
    episodes = [fractal_episode(3, f"task {k}", seed=k) for k in range(5)]
    builder_dir = write_builder_dir(
        tmp_path / "raw", "fractal20220817_data", "0.1.0", fractal_features_json(),
        {"train": [[serialize_example(e) for e in episodes]]},
    )  # fmt: skip
    shard = builder_dir / "fractal20220817_data-train.tfrecord-00000-of-00001"
    original = shard.read_bytes()
    fourth = index_tfrecord(shard)[3].offset
    data = bytearray(original)
    data[fourth + 12 + 200] ^= 0x01  # one payload bit of record 4 (after its 8-byte length and 4-byte CRC)
    shard.write_bytes(bytes(data))
    root = tmp_path / "ds"
    args = ["oxe", f"--raw_dir={builder_dir}", "--repo_id=test/flip", f"--root={root}"]
    assert convert_cli(args) == 2
    err = error_line(capsys.readouterr().err)
    assert f"data CRC mismatch in the record at byte {fourth}" in err and "3 of 5 episodes written" in err
    assert_stopped_incomplete("test/flip", root, written=3, planned=5)

    assert convert_cli([*args, "--skip_bad=true"]) == 0  # the same command with --skip_bad=true completes it
    assert (
        "4 episodes, 12 frames (1 written now, 3 already there, 1 skipped as bad" in capsys.readouterr().out
    )
    assert LeRobotDataset("test/flip", root=root).num_episodes == 4
    shard.write_bytes(original)  # or fix the input: a fresh run writes all five
    assert convert_cli([*args, "--overwrite=true"]) == 0
    assert LeRobotDataset("test/flip", root=root).num_episodes == 5


def test_language_table_instruction_codes_become_text(tmp_path):
    catalog = [
        ("steps/observation/rgb", "Image", (32, 48, 3), "uint8"),
        ("steps/observation/instruction", "Tensor", (512,), "int32"),
        ("steps/observation/effector_translation", "Tensor", (2,), "float32"),
        ("steps/action", "Tensor", (2,), "float32"),
        ("steps/is_first", "Tensor", (), "bool"),
    ]
    text = "push the red star to the top left"
    codes = np.zeros(512, dtype=np.int64)
    codes[: len(text)] = list(text.encode())
    steps = 3
    record = {
        "steps/observation/rgb": [
            jpeg_bytes(np.full((32, 48, 3), 90 + 40 * t, np.uint8)) for t in range(steps)
        ],
        "steps/observation/instruction": np.tile(codes, steps),
        "steps/observation/effector_translation": np.arange(2 * steps, dtype=np.float32),
        "steps/action": -np.arange(2 * steps, dtype=np.float32),
        "steps/is_first": np.array([1, 0, 0]),
    }
    builder_dir = write_builder_dir(
        tmp_path / "raw", "language_table", "0.0.1", catalog_to_features_json(catalog),
        {"train": [[serialize_example(record)]]},
    )  # fmt: skip
    report = convert_oxe(builder_dir, "test/lt", root=tmp_path / "ds", progress=False)
    assert report.total_frames == 3
    dataset = LeRobotDataset("test/lt", root=tmp_path / "ds", video_backend="pyav")
    assert dataset.meta.fps == 10
    assert dataset[2]["task"] == text
    np.testing.assert_allclose(dataset[2]["action"].numpy(), [-4, -5])
    np.testing.assert_allclose(dataset[1]["observation.state"].numpy(), [2, 3])
