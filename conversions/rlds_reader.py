"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a sequence of records framed as::

    uint64 length (little endian) | uint32 masked_crc32c(length) | bytes data[length] | uint32 masked_crc32c(data)

Each record of an RLDS / TFDS dataset is a serialized ``tf.train.Example`` protobuf::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }       # map entry: key = 1, value = 2
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

This module decodes both from the wire format directly (NumPy for the packed numeric lists), so a
converter can stream episodes from Open X-Embodiment shards without installing TensorFlow. CRCs are
checked with ``google-crc32c`` (a C implementation, a required dependency); checks can be switched off.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

_CRC_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked crc of length
_FOOTER = struct.Struct("<I")  # masked crc of data


class TFRecordError(ValueError):
    """A TFRecord file or one of its records cannot be read; the message names the file and byte offset."""


class ExampleDecodeError(ValueError):
    """Bytes that are not a valid serialized ``tf.train.Example``."""


# ----------------------------------------------------------------------------------------------- CRC-32C
def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord stores: ``rotr15(crc) + 0xa282ead8`` (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------- TFRecord
@dataclass(frozen=True)
class RecordLocation:
    """Where one record's payload lives: ``path`` and the byte ``offset`` of its 12-byte header."""

    path: str
    offset: int
    length: int


def index_tfrecord(path: str | Path) -> list[RecordLocation]:
    """Scan the framing of a TFRecord file (headers only, payloads are skipped) -> one location per record.

    Raises ``TFRecordError`` (naming file and offset) on a truncated file or a corrupt length field.
    """
    path = Path(path)
    locations: list[RecordLocation] = []
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset < size:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                raise TFRecordError(
                    f"{path}: truncated record header at byte {offset} "
                    f"({len(header)} of {_HEADER.size} bytes) - is the file complete?"
                )
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(
                    f"{path}: corrupt length field at byte {offset} (CRC mismatch) - not a TFRecord file, "
                    "or the file is damaged"
                )
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                raise TFRecordError(
                    f"{path}: record at byte {offset} claims {length} bytes but the file ends at byte {size}"
                    " - the file is truncated"
                )
            locations.append(RecordLocation(str(path), offset, length))
            offset = end
            f.seek(offset)
    return locations


def read_record(location: RecordLocation, verify_crc: bool = True) -> bytes:
    """Read the payload of one record located by ``index_tfrecord``."""
    with open(location.path, "rb") as f:
        f.seek(location.offset)
        blob = f.read(_HEADER.size + location.length + _FOOTER.size)
    return _payload(blob, location.path, location.offset, verify_crc)


def _payload(blob: bytes, path: str, offset: int, verify_crc: bool) -> bytes:
    length, length_crc = _HEADER.unpack_from(blob, 0)
    data = blob[_HEADER.size : _HEADER.size + length]
    if len(data) != length or len(blob) < _HEADER.size + length + _FOOTER.size:
        raise TFRecordError(f"{path}: record at byte {offset} is truncated")
    if verify_crc:
        if masked_crc32c(blob[:8]) != length_crc:
            raise TFRecordError(f"{path}: corrupt length field at byte {offset} (CRC mismatch)")
        (data_crc,) = _FOOTER.unpack_from(blob, _HEADER.size + length)
        if masked_crc32c(data) != data_crc:
            raise TFRecordError(
                f"{path}: data CRC mismatch in the record at byte {offset} ({length} bytes) - the file is damaged"
            )
    return data


def iter_tfrecord(path: str | Path, verify_crc: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record of a TFRecord file, in order."""
    for location in index_tfrecord(path):
        yield read_record(location, verify_crc=verify_crc)


# ------------------------------------------------------------------------------------- protobuf wire format
def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ExampleDecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ExampleDecodeError("varint longer than 10 bytes")


def _skip_field(buf: memoryview, pos: int, end: int, wire_type: int) -> int:
    if wire_type == 0:
        _, pos = _read_varint(buf, pos, end)
    elif wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _read_varint(buf, pos, end)
        pos += length
    elif wire_type == 5:
        pos += 4
    else:
        raise ExampleDecodeError(f"unsupported protobuf wire type {wire_type}")
    if pos > end:
        raise ExampleDecodeError("field runs past the end of its message")
    return pos


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, start, stop)``; for wire type 2 the span is the payload, else the value."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, start = _read_varint(buf, pos, end)
            stop = start + length
            if stop > end:
                raise ExampleDecodeError(f"field {field_number} runs past the end of its message")
            yield field_number, wire_type, start, stop
            pos = stop
        else:
            start = pos
            pos = _skip_field(buf, pos, end, wire_type)
            yield field_number, wire_type, start, pos


def decode_packed_varints(data: bytes | memoryview) -> np.ndarray:
    """Decode a packed run of (two's-complement) varints into an int64 array, vectorised with NumPy."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    is_last_byte = raw < 0x80
    if not is_last_byte[-1]:
        raise ExampleDecodeError("truncated packed varint list")
    value_index = np.concatenate(([0], np.cumsum(is_last_byte[:-1])))
    starts = np.flatnonzero(np.concatenate(([True], is_last_byte[:-1])))
    position_in_value = np.arange(raw.size) - starts[value_index]
    if position_in_value.max() > 9:
        raise ExampleDecodeError("varint longer than 10 bytes")
    parts = (raw & 0x7F).astype(np.uint64) << (7 * position_in_value).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts).view(np.int64)


FeatureValue = list[bytes] | np.ndarray
"""``list[bytes]`` for a BytesList, float32 array for a FloatList, int64 array for an Int64List."""


def _decode_feature(buf: memoryview, start: int, stop: int) -> FeatureValue:
    value: FeatureValue = []
    for kind, _, list_start, list_stop in _fields(buf, start, stop):
        if kind == 1:  # BytesList
            value = [
                bytes(buf[s:e]) for n, w, s, e in _fields(buf, list_start, list_stop) if n == 1 and w == 2
            ]
        elif kind == 2:  # FloatList: packed (wire 2) and/or unpacked fixed32 (wire 5) runs
            chunks = [
                np.frombuffer(buf[s:e], dtype="<f4")
                for n, _, s, e in _fields(buf, list_start, list_stop)
                if n == 1
            ]
            value = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        elif kind == 3:  # Int64List: packed (wire 2) and/or unpacked varints (wire 0)
            chunks = [
                decode_packed_varints(buf[s:e])
                for n, _, s, e in _fields(buf, list_start, list_stop)
                if n == 1
            ]
            value = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return value


def parse_example(data: bytes) -> dict[str, FeatureValue]:
    """Decode a serialized ``tf.train.Example`` -> ``{feature key: value}`` (see ``FeatureValue``).

    A key with an empty ``Feature`` (no list set) maps to an empty ``list``.
    """
    buf = memoryview(data)
    out: dict[str, FeatureValue] = {}
    try:
        for number, wire, f_start, f_stop in _fields(buf, 0, len(buf)):
            if number != 1 or wire != 2:
                continue
            for entry_no, entry_wire, e_start, e_stop in _fields(buf, f_start, f_stop):
                if entry_no != 1 or entry_wire != 2:
                    continue
                key, value = None, []
                for part_no, part_wire, p_start, p_stop in _fields(buf, e_start, e_stop):
                    if part_no == 1 and part_wire == 2:
                        key = bytes(buf[p_start:p_stop]).decode("utf-8")
                    elif part_no == 2 and part_wire == 2:
                        value = _decode_feature(buf, p_start, p_stop)
                if key is None:
                    raise ExampleDecodeError("feature map entry without a key")
                out[key] = value
    except (ExampleDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ExampleDecodeError(f"not a valid tf.train.Example ({err})") from err
    return out
