"""A TFDS / RLDS builder directory (as Open X-Embodiment publishes it), read without TensorFlow.

Layout of ``<name>/<version>/``::

    dataset_info.json    name, version, splits [{name, shardLengths, filepathTemplate, ...}]
    features.json        the TFDS FeaturesDict as JSON: nested ``featuresDict`` / ``sequence`` (Dataset) /
                         ``tensor`` / ``image`` / ``text`` nodes
    <name>-<split>.tfrecord-XXXXX-of-YYYYY

Every record is one episode: a ``tf.train.Example`` whose keys are the flattened feature paths
(``steps/observation/image``, ``steps/action/world_vector``, ``episode_metadata/file_path``). TFDS
serialises a feature inside a ``Dataset``/``Sequence`` of T steps as one list holding all steps:

* ``tensor`` with encoding ``none``: numbers -> FloatList/Int64List of ``T * prod(shape)`` values
  (bool and int as int64), strings -> BytesList of ``T * prod(shape)`` items;
* ``tensor`` with encoding ``bytes`` / ``zlib``: BytesList of T raw (zlib-compressed) little-endian buffers;
* ``image``: BytesList of T encoded images (JPEG/PNG); ``text``: BytesList of T UTF-8 strings.

``RLDSBuilder`` parses ``features.json`` into a flat ``{key: FeatureSpec}`` table and decodes only
the keys a caller asks for (shape ``(T, *shape)`` for step features, ``shape`` for episode features).
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .rlds_reader import FeatureValue, RecordLocation, index_tfrecord, parse_example, read_record

_TFDS_DTYPES = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}


class RLDSFormatError(ValueError):
    """A builder directory or an episode record that does not match what its ``features.json`` declares."""


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf of ``features.json``.

    kind: ``tensor`` | ``image`` | ``text`` | ``class_label``; dtype: TFDS dtype name (``string`` for text);
    shape: per-step shape (``()`` for scalars, ``-1`` for unknown dims); encoding: ``none`` | ``bytes`` | ``zlib``
    for tensors, the image format (``jpeg``/``png``/``""``) for images; in_steps: inside the ``steps`` sequence.
    """

    key: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    in_steps: bool
    description: str = ""


def _shape(node: dict) -> tuple[int, ...]:
    return tuple(int(d) for d in node.get("shape", {}).get("dimensions", []))


def parse_features_json(features: dict, source: str = "features.json") -> dict[str, FeatureSpec]:
    """Flatten a TFDS ``features.json`` document -> ``{flat key: FeatureSpec}``."""
    specs: dict[str, FeatureSpec] = {}

    def visit(node: dict, key: str, in_steps: bool) -> None:
        description = node.get("description", "")
        if "featuresDict" in node:
            for name, child in node["featuresDict"].get("features", {}).items():
                visit(child, f"{key}/{name}" if key else name, in_steps)
        elif "sequence" in node:
            if in_steps:
                raise RLDSFormatError(f"{source}: nested sequences are not supported ({key})")
            visit(node["sequence"]["feature"], key, True)
        elif "tensor" in node:
            tensor = node["tensor"]
            specs[key] = FeatureSpec(
                key,
                "tensor",
                tensor["dtype"],
                _shape(tensor),
                tensor.get("encoding", "none"),
                in_steps,
                description,
            )
        elif "image" in node:
            image = node["image"]
            specs[key] = FeatureSpec(
                key, "image", image.get("dtype", "uint8"), _shape(image), image.get("encodingFormat", ""),
                in_steps, description,
            )  # fmt: skip
        elif "text" in node:
            specs[key] = FeatureSpec(key, "text", "string", (), "none", in_steps, description)
        elif "classLabel" in node:
            specs[key] = FeatureSpec(key, "class_label", "int64", (), "none", in_steps, description)
        else:
            known = sorted(k for k in node if k not in {"pythonClassName", "description"})
            specs[key] = FeatureSpec(key, "unsupported:" + ",".join(known), "", (), "", in_steps, description)

    if "featuresDict" not in features:
        raise RLDSFormatError(f"{source}: expected a top-level 'featuresDict' (a TFDS FeaturesDict as JSON)")
    visit(features, "", False)
    return specs


@dataclass
class Episode:
    """One decoded episode: ``num_steps`` and the raw record, decoded on demand by ``RLDSBuilder``."""

    location: RecordLocation
    num_steps: int
    raw: dict[str, FeatureValue]


class RLDSBuilder:
    """Read a TFDS builder directory: metadata, splits, shards and per-key decoding of episodes."""

    def __init__(self, builder_dir: str | Path):
        self.builder_dir = Path(builder_dir)
        info_path = self.builder_dir / "dataset_info.json"
        features_path = self.builder_dir / "features.json"
        for path, what in ((info_path, "dataset_info.json"), (features_path, "features.json")):
            if not path.is_file():
                raise RLDSFormatError(
                    f"{path} not found: an RLDS builder directory (<dataset>/<version>/) holds "
                    f"{what}, features.json and <dataset>-<split>.tfrecord-XXXXX-of-YYYYY shards"
                )
        self.info = _read_json(info_path)
        self.features = parse_features_json(_read_json(features_path), str(features_path))
        self.name: str = self.info.get("name") or self.builder_dir.parent.name

    # ------------------------------------------------------------------------------------------ metadata
    @property
    def split_names(self) -> list[str]:
        return [split["name"] for split in self.info.get("splits", [])]

    def shard_paths(self, split: str) -> list[Path]:
        """The TFRecord shards of ``split``, from ``dataset_info.json`` (falls back to a file-name glob)."""
        pattern = re.compile(rf"^{re.escape(self.name)}-{re.escape(split)}\.tfrecord-(\d+)-of-(\d+)$")
        found = sorted(p for p in self.builder_dir.iterdir() if pattern.match(p.name))
        declared = next((s for s in self.info.get("splits", []) if s["name"] == split), None)
        if declared is None and not found:
            raise RLDSFormatError(
                f"{self.builder_dir}: no split {split!r}; dataset_info.json declares {self.split_names}"
            )
        if declared is not None:
            num_shards = len(declared.get("shardLengths", [])) or len(found)
            expected = [
                self.builder_dir / f"{self.name}-{split}.tfrecord-{i:05d}-of-{num_shards:05d}"
                for i in range(num_shards)
            ]
            missing = [p.name for p in expected if not p.is_file()]
            if missing:
                raise RLDSFormatError(
                    f"{self.builder_dir}: split {split!r} declares {num_shards} shard(s) in dataset_info.json but "
                    f"{len(missing)} are missing, e.g. {missing[0]}"
                )
            return expected
        return found

    def num_episodes(self, split: str) -> int | None:
        declared = next((s for s in self.info.get("splits", []) if s["name"] == split), None)
        if declared is None or "shardLengths" not in declared:
            return None
        return sum(int(n) for n in declared["shardLengths"])

    def spec(self, key: str) -> FeatureSpec:
        if key not in self.features:
            step_keys = sorted(k for k, s in self.features.items() if s.in_steps)
            raise RLDSFormatError(
                f"{self.builder_dir / 'features.json'}: no feature {key!r}; step features are {step_keys}"
            )
        return self.features[key]

    # ------------------------------------------------------------------------------------------ episodes
    def index(self, split: str) -> list[RecordLocation]:
        """All episode records of ``split``, in shard order (reads only the record headers)."""
        return [loc for shard in self.shard_paths(split) for loc in index_tfrecord(shard)]

    def read_episode(self, location: RecordLocation, verify_crc: bool = True) -> Episode:
        raw = parse_example(read_record(location, verify_crc=verify_crc))
        return Episode(location, self._num_steps(raw, location), raw)

    def _num_steps(self, raw: dict[str, FeatureValue], location: RecordLocation) -> int:
        for key in ("steps/is_first", "steps/is_last", *(k for k, s in self.features.items() if s.in_steps)):
            spec = self.features.get(key)
            if spec is None or key not in raw:
                continue
            per_step = _values_per_step(spec)
            if per_step:
                return len(raw[key]) // per_step
        raise RLDSFormatError(f"{_where(location)}: episode has no step features (empty 'steps')")

    def decode(self, episode: Episode, key: str) -> np.ndarray | list[str] | list[bytes]:
        """Decode feature ``key`` of ``episode``.

        Step tensors -> ``(T, *shape)`` array of the declared dtype (strings -> list of str of length T for
        scalars); images -> list of T encoded bytes (decode with ``decode_image``); text -> list of T str.
        Episode-level features drop the leading T.
        """
        spec = self.spec(key)
        where = f"{_where(episode.location)}, feature {key!r}"
        if key not in episode.raw:
            raise RLDSFormatError(f"{where}: missing from the record although features.json declares it")
        value = episode.raw[key]
        count = episode.num_steps if spec.in_steps else 1
        if spec.kind in {"image", "text"} or (spec.kind == "tensor" and spec.dtype == "string"):
            items = list(value) if isinstance(value, list) else []
            expected = count * (int(np.prod(spec.shape)) if spec.kind == "tensor" else 1)
            if len(items) != expected:
                raise RLDSFormatError(f"{where}: expected {expected} byte string(s), found {len(value)}")
            if spec.kind == "image":
                return items if spec.in_steps else items[0]
            texts = [b.decode("utf-8", errors="replace") for b in items]
            return texts if spec.in_steps else texts[0]
        if spec.kind not in {"tensor", "class_label"}:
            raise RLDSFormatError(f"{where}: cannot decode a feature of kind {spec.kind!r}")
        if any(d < 0 for d in spec.shape):
            raise RLDSFormatError(f"{where}: tensors with unknown dimensions {spec.shape} are not supported")
        dtype = _TFDS_DTYPES.get(spec.dtype)
        if dtype is None:
            raise RLDSFormatError(f"{where}: unsupported dtype {spec.dtype!r}")
        if spec.encoding in {"bytes", "zlib"}:
            if not isinstance(value, list) or len(value) != count:
                raise RLDSFormatError(f"{where}: expected {count} encoded buffer(s) ({spec.encoding})")
            try:
                buffers = [zlib.decompress(b) if spec.encoding == "zlib" else b for b in value]
            except zlib.error as err:
                raise RLDSFormatError(f"{where}: zlib data cannot be decompressed ({err})") from err
            size = int(np.prod(spec.shape)) * np.dtype(dtype).itemsize
            if any(len(b) != size for b in buffers):
                raise RLDSFormatError(
                    f"{where}: encoded tensor is not {size} bytes ({spec.shape} x {spec.dtype})"
                )
            array = np.frombuffer(b"".join(buffers), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
        elif spec.encoding == "none":
            if isinstance(value, list):
                raise RLDSFormatError(f"{where}: expected numbers, found byte strings")
            expected = count * int(np.prod(spec.shape))
            if value.size != expected:
                raise RLDSFormatError(
                    f"{where}: expected {expected} values ({count} x {spec.shape}), found {value.size}"
                )
            array = value.astype(dtype)
        else:
            raise RLDSFormatError(f"{where}: unknown tensor encoding {spec.encoding!r}")
        return array.reshape((count, *spec.shape)) if spec.in_steps else array.reshape(spec.shape)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> ``(H, W, 3)`` uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _values_per_step(spec: FeatureSpec) -> int:
    if spec.kind in {"image", "text"} or spec.encoding in {"bytes", "zlib"}:
        return 1
    if any(d < 0 for d in spec.shape):
        return 0
    return int(np.prod(spec.shape))


def _where(location: RecordLocation) -> str:
    return f"{location.path} (record at byte {location.offset})"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RLDSFormatError(f"{path}: not valid JSON ({err})") from err
