"""Write small RLDS builder directories for tests, in the on-disk schema of real OXE datasets.

Records are encoded with the ``protobuf`` library (a ``tf.train.Example`` descriptor built at run time),
independently of the project's own wire-format decoder, so a round trip checks the decoder against a
reference encoder.

``FRACTAL_CATALOG`` is the feature table of ``fractal20220817_data`` 0.1.0 as the TFDS catalog publishes it
(tensorflow/datasets ``docs/catalog/fractal20220817_data.md``, "Feature documentation": key, class,
shape, dtype); ``fractal_features_json`` renders it in the JSON form TFDS writes to ``features.json`` (node
layout as in the published ``features.json`` of the sibling Google RT-1-family dataset ``kuka`` 0.1.0:
``featuresDict``/``sequence``/``tensor``/``image`` nodes, ``encodingFormat: jpeg``).
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
from lerobot_defi.conversions.rlds_reader import masked_crc32c
from PIL import Image


def write_tfrecord(path: str | Path, records: list[bytes]) -> None:
    """Write ``records`` as a TFRecord file: ``uint64 length | masked crc32c(length) | data | masked crc32c(data)``."""
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length)
            f.write(struct.pack("<I", masked_crc32c(length)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))


def _make_crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c_python(data: bytes) -> int:
    """CRC-32C of ``data`` in pure Python: an independent reference for the library's C implementation."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# key, TFDS class, shape, dtype  (transcribed from the TFDS catalog entry of fractal20220817_data 0.1.0)
FRACTAL_CATALOG: list[tuple[str, str, tuple[int, ...], str]] = [
    ("aspects/already_success", "Tensor", (), "bool"),
    ("aspects/feasible", "Tensor", (), "bool"),
    ("aspects/has_aspects", "Tensor", (), "bool"),
    ("aspects/success", "Tensor", (), "bool"),
    ("aspects/undesirable", "Tensor", (), "bool"),
    ("attributes/collection_mode", "Tensor", (), "int64"),
    ("attributes/collection_mode_name", "Tensor", (), "string"),
    ("attributes/data_type", "Tensor", (), "int64"),
    ("attributes/data_type_name", "Tensor", (), "string"),
    ("attributes/env", "Tensor", (), "int64"),
    ("attributes/env_name", "Tensor", (), "string"),
    ("attributes/location", "Tensor", (), "int64"),
    ("attributes/location_name", "Tensor", (), "string"),
    ("attributes/objects_family", "Tensor", (), "int64"),
    ("attributes/objects_family_name", "Tensor", (), "string"),
    ("attributes/task_family", "Tensor", (), "int64"),
    ("attributes/task_family_name", "Tensor", (), "string"),
    ("steps/action/base_displacement_vector", "Tensor", (2,), "float32"),
    ("steps/action/base_displacement_vertical_rotation", "Tensor", (1,), "float32"),
    ("steps/action/gripper_closedness_action", "Tensor", (1,), "float32"),
    ("steps/action/rotation_delta", "Tensor", (3,), "float32"),
    ("steps/action/terminate_episode", "Tensor", (3,), "int32"),
    ("steps/action/world_vector", "Tensor", (3,), "float32"),
    ("steps/is_first", "Tensor", (), "bool"),
    ("steps/is_last", "Tensor", (), "bool"),
    ("steps/is_terminal", "Tensor", (), "bool"),
    ("steps/observation/base_pose_tool_reached", "Tensor", (7,), "float32"),
    ("steps/observation/gripper_closed", "Tensor", (1,), "float32"),
    ("steps/observation/gripper_closedness_commanded", "Tensor", (1,), "float32"),
    ("steps/observation/height_to_bottom", "Tensor", (1,), "float32"),
    ("steps/observation/image", "Image", (256, 320, 3), "uint8"),
    ("steps/observation/natural_language_embedding", "Tensor", (512,), "float32"),
    ("steps/observation/natural_language_instruction", "Tensor", (), "string"),
    ("steps/observation/orientation_box", "Tensor", (2, 3), "float32"),
    ("steps/observation/orientation_start", "Tensor", (4,), "float32"),
    ("steps/observation/robot_orientation_positions_box", "Tensor", (3, 3), "float32"),
    ("steps/observation/rotation_delta_to_go", "Tensor", (3,), "float32"),
    ("steps/observation/src_rotation", "Tensor", (4,), "float32"),
    ("steps/observation/vector_to_go", "Tensor", (3,), "float32"),
    ("steps/observation/workspace_bounds", "Tensor", (3, 3), "float32"),
    ("steps/reward", "Scalar", (), "float32"),
]

_CLASS_PATHS = {
    "Tensor": "tensorflow_datasets.core.features.tensor_feature.Tensor",
    "Scalar": "tensorflow_datasets.core.features.scalar.Scalar",
    "Image": "tensorflow_datasets.core.features.image_feature.Image",
    "FeaturesDict": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
    "Dataset": "tensorflow_datasets.core.features.dataset_feature.Dataset",
}


def _leaf(tfds_class: str, shape: tuple[int, ...], dtype: str) -> dict:
    shape_json = {"dimensions": [str(d) for d in shape]} if shape else {}
    if tfds_class == "Image":
        return {
            "pythonClassName": _CLASS_PATHS["Image"],
            "image": {"shape": shape_json, "dtype": dtype, "encodingFormat": "jpeg"},
        }
    return {
        "pythonClassName": _CLASS_PATHS[tfds_class],
        "tensor": {"shape": shape_json, "dtype": dtype, "encoding": "none"},
    }


def _features_dict(children: dict) -> dict:
    return {"pythonClassName": _CLASS_PATHS["FeaturesDict"], "featuresDict": {"features": children}}


def catalog_to_features_json(catalog: list[tuple[str, str, tuple[int, ...], str]]) -> dict:
    """Render a flat catalog table as a nested TFDS ``features.json`` document (``steps`` is a Dataset)."""
    tree: dict = {}
    for key, tfds_class, shape, dtype in catalog:
        parts = key.split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _leaf(tfds_class, shape, dtype)

    def build(node: dict, name: str) -> dict:
        if "pythonClassName" in node:
            return node
        built = _features_dict({k: build(v, k) for k, v in node.items()})
        if name == "steps":
            return {
                "pythonClassName": _CLASS_PATHS["Dataset"],
                "sequence": {"feature": built, "length": "-1"},
            }
        return built

    return build(tree, "")


def fractal_features_json() -> dict:
    return catalog_to_features_json(FRACTAL_CATALOG)


# ------------------------------------------------------------------------------- tf.train.Example via protobuf
def example_message_class():
    """The ``tf.train.Example`` message class, built from a descriptor with the ``protobuf`` library."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(
        name="lerobot_defi_test_example.proto", package="tfx", syntax="proto3"
    )
    label_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    label_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    types = descriptor_pb2.FieldDescriptorProto
    for name, field_type in (
        ("BytesList", types.TYPE_BYTES),
        ("FloatList", types.TYPE_FLOAT),
        ("Int64List", types.TYPE_INT64),
    ):
        msg = fdp.message_type.add(name=name)
        msg.field.add(name="value", number=1, label=label_rep, type=field_type)
    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (fname, tname) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")), start=1
    ):
        feature.field.add(
            name=fname, number=number, label=label_opt, type=types.TYPE_MESSAGE, type_name=f".tfx.{tname}",
            oneof_index=0,
        )  # fmt: skip
    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=label_opt, type=types.TYPE_STRING)
    entry.field.add(
        name="value", number=2, label=label_opt, type=types.TYPE_MESSAGE, type_name=".tfx.Feature"
    )
    features.field.add(
        name="feature",
        number=1,
        label=label_rep,
        type=types.TYPE_MESSAGE,
        type_name=".tfx.Features.FeatureEntry",
    )
    example = fdp.message_type.add(name="Example")
    example.field.add(
        name="features", number=1, label=label_opt, type=types.TYPE_MESSAGE, type_name=".tfx.Features"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tfx.Example"))


def serialize_example(values: dict[str, list[bytes] | np.ndarray]) -> bytes:
    """``{key: list[bytes] | float array | int/bool array}`` -> serialized ``tf.train.Example`` (protobuf)."""
    example = example_message_class()()
    for key, value in values.items():
        feature = example.features.feature[key]
        if isinstance(value, list):
            feature.bytes_list.value.extend(value)
        elif np.issubdtype(value.dtype, np.floating):
            feature.float_list.value.extend(value.ravel().astype(np.float32).tolist())
        else:
            feature.int64_list.value.extend(value.ravel().astype(np.int64).tolist())
    return example.SerializeToString()


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def fractal_episode(num_steps: int, instruction: str, seed: int) -> dict[str, list[bytes] | np.ndarray]:
    """One synthetic episode in the flattened fractal20220817_data record layout (all catalog keys present).

    Images are smooth colour ramps (JPEG survives them well) whose mean brightness rises with the step index.
    """
    rng = np.random.default_rng(seed)
    values: dict[str, list[bytes] | np.ndarray] = {}
    for key, tfds_class, shape, dtype in FRACTAL_CATALOG:
        count = num_steps if key.startswith("steps/") else 1
        if tfds_class == "Image":
            yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
            values[key] = [
                jpeg_bytes(
                    np.stack(
                        [(xx * 255 // shape[1]), (yy * 255 // shape[0]), np.full_like(xx, 20 + 20 * t)], -1
                    )
                    .clip(0, 255)
                    .astype(np.uint8)
                )
                for t in range(count)
            ]
        elif dtype == "string":
            text = (
                instruction
                if key.endswith("natural_language_instruction")
                else f"{key.rsplit('/', 1)[-1]} value"
            )
            values[key] = [text.encode()] * count
        elif dtype == "bool":
            values[key] = np.zeros(count * int(np.prod(shape)), dtype=np.int64)
        elif dtype.startswith("int"):
            values[key] = rng.integers(0, 3, size=count * int(np.prod(shape))).astype(np.int64)
        else:
            values[key] = rng.normal(size=count * int(np.prod(shape))).astype(np.float32)
    values["steps/is_first"] = np.array([1] + [0] * (num_steps - 1), dtype=np.int64)
    values["steps/is_last"] = np.array([0] * (num_steps - 1) + [1], dtype=np.int64)
    values["steps/is_terminal"] = values["steps/is_last"].copy()
    return values


def write_builder_dir(
    root: Path,
    name: str,
    version: str,
    features_json: dict,
    shards: dict[str, list[list[bytes]]],
) -> Path:
    """Write ``root/<name>/<version>/`` with dataset_info.json, features.json and TFRecord shards.

    shards: ``{split: [records of shard 0, records of shard 1, ...]}``.
    """
    builder_dir = root / name / version
    builder_dir.mkdir(parents=True, exist_ok=True)
    (builder_dir / "features.json").write_text(json.dumps(features_json, indent=4))
    splits = []
    for split, shard_records in shards.items():
        for i, records in enumerate(shard_records):
            write_tfrecord(
                builder_dir / f"{name}-{split}.tfrecord-{i:05d}-of-{len(shard_records):05d}", records
            )
        splits.append(
            {
                "name": split,
                "numBytes": str(sum(len(r) for records in shard_records for r in records)),
                "shardLengths": [str(len(records)) for records in shard_records],
                "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            }
        )
    info = {
        "name": name,
        "version": version,
        "fileFormat": "tfrecord",
        "moduleName": f"{name}.{name}_dataset_builder",
        "releaseNotes": {version: "Initial release."},
        "splits": splits,
    }
    (builder_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return builder_dir
