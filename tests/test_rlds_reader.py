"""TFRecord framing, CRC-32C and tf.train.Example decoding without TensorFlow; TFDS builder directories.

Real data: the committed slice of the BridgeData debug shards (tests/data/oxe_bridge_slice). Reference
encoder for Example records: the ``protobuf`` library (descriptor built in ``rlds_fixture_utils``).
"""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from defi_test_utils import SHARED_DATA, TESTS_DIR
from lerobot_defi.conversions.rlds_builder import (
    RLDSBuilder,
    RLDSFormatError,
    decode_image,
    parse_features_json,
)
from lerobot_defi.conversions.rlds_reader import (
    ExampleDecodeError,
    TFRecordError,
    crc32c,
    index_tfrecord,
    iter_tfrecord,
    masked_crc32c,
    parse_example,
    read_record,
)
from rlds_fixture_utils import (
    FRACTAL_CATALOG,
    catalog_to_features_json,
    crc32c_python,
    fractal_episode,
    fractal_features_json,
    serialize_example,
    write_builder_dir,
)

BRIDGE_SLICE = TESTS_DIR / "data" / "oxe_bridge_slice" / "bridge_dataset" / "1.0.0"
BRIDGE_TRAIN_SHARD = BRIDGE_SLICE / "bridge_dataset-train.tfrecord-00000-of-00001"

pytest.importorskip("google.protobuf", reason="the reference tf.train.Example encoder needs protobuf")


def test_crc32c_matches_the_standard_check_value_and_a_reference_implementation():
    # CRC-32C check value of "123456789" (RFC 3720, iSCSI).
    assert crc32c_python(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    payload = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    assert crc32c(payload) == crc32c_python(payload)
    # TFRecord's mask: rotate right by 15 and add 0xa282ead8.
    raw = crc32c(payload)
    assert masked_crc32c(payload) == ((((raw >> 15) | (raw << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_example_decoder_agrees_with_protobuf_encoder():
    values = {
        "steps/action": np.array([0.5, -1.25, 3.0e-8, np.float32(1e30)], dtype=np.float32),
        "steps/is_first": np.array([1, 0, 0], dtype=np.int64),
        "ints/extremes": np.array([-1, -(2**63), 2**63 - 1, 0, 300, -300], dtype=np.int64),
        "steps/language_instruction": [b"pick up the cup", "héllo wörld".encode(), b""],
        "image/bytes": [bytes(range(256)) * 3],
    }
    decoded = parse_example(serialize_example(values))
    assert set(decoded) == set(values)
    assert decoded["steps/action"].dtype == np.float32
    np.testing.assert_array_equal(decoded["steps/action"], values["steps/action"])
    np.testing.assert_array_equal(decoded["steps/is_first"], [1, 0, 0])
    np.testing.assert_array_equal(decoded["ints/extremes"], values["ints/extremes"])
    assert decoded["steps/language_instruction"] == values["steps/language_instruction"]
    assert decoded["image/bytes"] == values["image/bytes"]


def test_example_decoder_reads_unpacked_repeated_fields():
    # proto2 writers emit unpacked floats (wire type 5) and varints (wire type 0); both must decode.
    floats = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.5, -2.0))
    ints = b"".join(b"\x08" + bytes([v]) for v in (7, 9))

    def length_delimited(field: int, payload: bytes) -> bytes:
        return bytes([(field << 3) | 2, len(payload)]) + payload

    def entry(key: bytes, feature: bytes) -> bytes:
        return length_delimited(1, length_delimited(1, key) + length_delimited(2, feature))

    features = entry(b"f", length_delimited(2, floats)) + entry(b"i", length_delimited(3, ints))
    decoded = parse_example(length_delimited(1, features))
    np.testing.assert_array_equal(decoded["f"], [1.5, -2.0])
    np.testing.assert_array_equal(decoded["i"], [7, 9])


def test_garbage_is_not_an_example():
    with pytest.raises(ExampleDecodeError, match=r"tf\.train\.Example"):
        parse_example(b"\x0a\xff\xff\xff\xff\x0f")


def test_real_bridge_slice_frames_and_fields():
    locations = index_tfrecord(BRIDGE_TRAIN_SHARD)
    assert len(locations) == 2
    assert locations[0].offset == 0 and locations[1].offset == locations[0].length + 16
    records = list(iter_tfrecord(BRIDGE_TRAIN_SHARD))
    first = parse_example(records[0])
    assert first["steps/is_first"].tolist() == [1] + [0] * 9
    assert first["steps/action"].shape == (70,)  # 10 steps x 7
    assert first["steps/language_instruction"][0] == b"put cup from counter or drying rack into sink"
    assert first["steps/observation/image_0"][0][:2] == b"\xff\xd8"  # JPEG
    assert first["episode_metadata/episode_id"].tolist() == [5]


@pytest.mark.skipif(not (SHARED_DATA / "oxe_bridge_debug").is_dir(), reason="shared/data is not present")
def test_reader_parses_every_record_of_the_full_debug_shards_with_crc():
    root = SHARED_DATA / "oxe_bridge_debug" / "bridge_dataset" / "1.0.0"
    builder = RLDSBuilder(root)
    for split in ("train", "val"):
        locations = builder.index(split)
        assert len(locations) == builder.num_episodes(split) == 25
        steps = [builder.read_episode(loc).num_steps for loc in locations]
        assert sum(steps) == 250


def test_crc_mismatch_and_truncation_are_reported_with_file_and_offset(tmp_path):
    data = bytearray(BRIDGE_TRAIN_SHARD.read_bytes())
    second = index_tfrecord(BRIDGE_TRAIN_SHARD)[1]
    corrupt = tmp_path / "corrupt.tfrecord"
    data[second.offset + 12 + 100] ^= 0xFF  # flip one payload byte of record 2
    corrupt.write_bytes(bytes(data))
    locations = index_tfrecord(corrupt)  # framing is intact
    read_record(locations[0])
    with pytest.raises(
        TFRecordError, match=rf"corrupt\.tfrecord: data CRC mismatch in the record at byte {second.offset}"
    ):
        read_record(locations[1])
    assert len(read_record(locations[1], verify_crc=False)) == second.length

    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes(BRIDGE_TRAIN_SHARD.read_bytes()[: second.offset + 5000])
    with pytest.raises(TFRecordError, match=rf"truncated\.tfrecord: record at byte {second.offset} claims"):
        index_tfrecord(truncated)

    not_tfrecord = tmp_path / "text.tfrecord"
    not_tfrecord.write_text("this is not a tfrecord file at all")
    with pytest.raises(TFRecordError, match="corrupt length field at byte 0"):
        index_tfrecord(not_tfrecord)


def test_builder_reads_real_slice_metadata_and_decodes_features():
    builder = RLDSBuilder(BRIDGE_SLICE)
    assert builder.name == "bridge_dataset"
    assert builder.split_names == ["train", "val"]
    assert builder.num_episodes("train") == 2
    episode = builder.read_episode(builder.index("train")[0])
    assert episode.num_steps == 10
    action = builder.decode(episode, "steps/action")
    assert action.shape == (10, 7) and action.dtype == np.float32
    assert builder.decode(episode, "steps/is_first").dtype == np.bool_
    assert (
        builder.decode(episode, "steps/language_instruction")[3]
        == "put cup from counter or drying rack into sink"
    )
    assert builder.decode(episode, "episode_metadata/episode_id") == 5
    image = decode_image(builder.decode(episode, "steps/observation/image_0")[0])
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_builder_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(RLDSFormatError, match=r"dataset_info\.json not found"):
        RLDSBuilder(tmp_path)
    copy = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(BRIDGE_SLICE, copy)
    builder = RLDSBuilder(copy)
    with pytest.raises(
        RLDSFormatError, match=r"no split 'test'; dataset_info\.json declares \['train', 'val'\]"
    ):
        builder.shard_paths("test")
    with pytest.raises(RLDSFormatError, match=r"no feature 'steps/observation/wrist'"):
        builder.spec("steps/observation/wrist")
    (copy / "bridge_dataset-val.tfrecord-00000-of-00001").unlink()
    with pytest.raises(
        RLDSFormatError, match=r"1 are missing, e\.g\. bridge_dataset-val\.tfrecord-00000-of-00001"
    ):
        builder.shard_paths("val")


def test_fractal_fixture_schema_is_the_published_catalog():
    specs = parse_features_json(fractal_features_json())
    assert len(specs) == len(FRACTAL_CATALOG) == 41
    for key, tfds_class, shape, dtype in FRACTAL_CATALOG:
        spec = specs[key]
        assert spec.shape == shape and spec.dtype == dtype, key
        assert spec.kind == ("image" if tfds_class == "Image" else "tensor"), key
        assert spec.in_steps == key.startswith("steps/"), key


def test_fractal_fixture_round_trip_through_builder(tmp_path):
    records = [serialize_example(fractal_episode(n, f"task {n}", seed=n)) for n in (3, 5)]
    builder_dir = write_builder_dir(
        tmp_path, "fractal20220817_data", "0.1.0", fractal_features_json(), {"train": [records]}
    )
    builder = RLDSBuilder(builder_dir)
    episodes = [builder.read_episode(loc) for loc in builder.index("train")]
    assert [e.num_steps for e in episodes] == [3, 5]
    expected = fractal_episode(5, "task 5", seed=5)
    second = episodes[1]
    np.testing.assert_allclose(
        builder.decode(second, "steps/observation/workspace_bounds"),
        np.asarray(expected["steps/observation/workspace_bounds"]).reshape(5, 3, 3),
    )
    terminate = builder.decode(second, "steps/action/terminate_episode")
    assert terminate.dtype == np.int32 and terminate.shape == (5, 3)
    assert builder.decode(second, "steps/observation/natural_language_instruction") == ["task 5"] * 5
    assert builder.decode(second, "attributes/env_name") == "env_name value"
    image = decode_image(builder.decode(second, "steps/observation/image")[4])
    assert image.shape == (256, 320, 3)
    assert abs(float(image[..., 2].mean()) - 100.0) < 3  # blue channel = 20 + 20 * step


def test_zlib_encoded_tensors_decode_and_wrong_sizes_are_reported(tmp_path):
    # kuka publishes some step tensors with "encoding": "zlib": one compressed buffer per step.
    catalog = [
        ("steps/observation/gripper_closed", "Tensor", (1,), "float32"),
        ("steps/observation/clip_function_input/base_pose_tool_reached", "Tensor", (7,), "float32"),
        ("steps/is_first", "Tensor", (), "bool"),
    ]
    features = catalog_to_features_json(catalog)
    observation = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"][
        "features"
    ]["observation"]["featuresDict"]["features"]
    for node in (
        observation["gripper_closed"],
        observation["clip_function_input"]["featuresDict"]["features"]["base_pose_tool_reached"],
    ):
        node["tensor"]["encoding"] = "zlib"
    pose = np.arange(21, dtype=np.float32).reshape(3, 7)
    good = {
        "steps/observation/gripper_closed": [zlib.compress(np.float32(v).tobytes()) for v in (0, 1, 1)],
        "steps/observation/clip_function_input/base_pose_tool_reached": [
            zlib.compress(p.tobytes()) for p in pose
        ],
        "steps/is_first": np.array([1, 0, 0]),
    }
    bad = dict(good, **{"steps/observation/gripper_closed": [zlib.compress(b"\x00" * 8)] * 3})
    builder_dir = write_builder_dir(
        tmp_path, "kuka", "0.1.0", features, {"train": [[serialize_example(good), serialize_example(bad)]]}
    )
    (builder_dir / "features.json").write_text(json.dumps(features))
    builder = RLDSBuilder(builder_dir)
    first, second = (builder.read_episode(loc) for loc in builder.index("train"))
    np.testing.assert_array_equal(
        builder.decode(first, "steps/observation/clip_function_input/base_pose_tool_reached"), pose
    )
    np.testing.assert_array_equal(builder.decode(first, "steps/observation/gripper_closed")[:, 0], [0, 1, 1])
    with pytest.raises(RLDSFormatError, match=r"feature 'steps/observation/gripper_closed'.*not 4 bytes"):
        builder.decode(second, "steps/observation/gripper_closed")
