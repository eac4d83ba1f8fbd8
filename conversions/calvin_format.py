"""The CALVIN dataset format on disk: split folders, per-frame ``episode_XXXXXXX.npz`` files, play segments,
language windows and scene ranges, read into LeRobot features and episode plans (the windows and play layouts
described in ``calvin.py``).

Frames -> ``read_calvin_frame(path, options)``: ``{"rgb_static": uint8 (200, 200, 3), "rgb_gripper": uint8
(84, 84, 3), "robot_obs": (15,), "scene_obs": (24,), "rel_actions" | "actions": (7,), ...}``; an episode plan
-> ``read_episode(options, spec)``: an ``EpisodeFrames`` with LeRobot keys (``features(options)``).
"""

from __future__ import annotations

import heapq
import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ISA-L's inflate is ~2.5x faster than zlib's on CALVIN frames; reading competes with video encoding.
from isal.isal_zlib import decompress as _inflate

from .conversion_errors import ConversionInputError
from .episode_writer import EpisodeFrames

SPLITS = ("training", "validation")
LAYOUTS = ("windows", "play")
WINDOW_ENDS = ("exclusive", "inclusive")
SCENES = {"calvin_scene_A": 0, "calvin_scene_B": 1, "calvin_scene_C": 2, "calvin_scene_D": 3}
SCENE_LETTERS = "ABCD"
CAMERAS = {
    "rgb_static": ("observation.images.static", (200, 200, 3)),
    "rgb_gripper": ("observation.images.gripper", (84, 84, 3)),
}
DEPTH = {"depth_static": (200, 200), "depth_gripper": (84, 84)}
TACTILE = {
    "rgb_tactile": ("tactile_rgb", (160, 120, 6), "uint8"),
    "depth_tactile": ("tactile_depth", (160, 120, 2), "float32"),
}
DEFAULT_FPS = 30


class CalvinFormatError(ConversionInputError):
    """A CALVIN folder or file that does not have the expected layout or content."""


@dataclass(frozen=True)
class ReadOptions:
    absolute_actions: bool = False
    depth: bool = False
    tactile: bool = False


@dataclass(frozen=True)
class EpisodeSpec:
    """Frames ``first .. last`` (inclusive, CALVIN global indices) of one split, with per-frame tasks."""

    split_dir: str
    split: int
    scene: int
    first: int
    last: int
    tasks: tuple[str, ...]


def _frame_path(split_dir: Path, index: int) -> Path:
    return split_dir / f"episode_{index:07d}.npz"


def _load_pickled(path: Path, what: str):
    if not path.is_file():
        raise CalvinFormatError(f"missing {path} ({what})")
    try:
        return np.load(path, allow_pickle=True)
    except Exception as err:
        raise CalvinFormatError(f"cannot read {path} ({what}): {err}") from err


def _read_npz_arrays(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` (stored or deflated members), inflating each member once."""
    arrays = {}
    with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        missing = [key for key in keys if key not in members]
        if missing:
            raise CalvinFormatError(f"{path} lacks {missing}; it has {sorted(members)}")
        for key in keys:
            info = members[key]
            handle.seek(info.header_offset)
            name_length, extra_length = struct.unpack("<HH", handle.read(30)[26:30])
            handle.seek(info.header_offset + 30 + name_length + extra_length)
            payload = handle.read(info.compress_size)
            if info.compress_type == zipfile.ZIP_DEFLATED:
                payload = _inflate(payload, -15)
            elif info.compress_type != zipfile.ZIP_STORED:
                raise CalvinFormatError(
                    f"{path}: member {info.filename} uses unsupported compression {info.compress_type}"
                )
            if len(payload) != info.file_size:
                raise CalvinFormatError(f"{path}: member {info.filename} is truncated")
            arrays[key] = np.lib.format.read_array(io.BytesIO(payload))
    return arrays


def read_calvin_frame(path: Path, options: ReadOptions) -> dict[str, np.ndarray]:
    """One CALVIN frame -> feature arrays, checking keys, shapes and dtypes against the CALVIN layout."""
    required = [
        "rgb_static",
        "rgb_gripper",
        "robot_obs",
        "scene_obs",
        "actions" if options.absolute_actions else "rel_actions",
    ]
    if options.depth:
        required += list(DEPTH)
    if options.tactile:
        required += list(TACTILE)
    try:
        raw = _read_npz_arrays(path, required)  # only what is converted is decompressed
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as err:
        if isinstance(err, CalvinFormatError):
            raise
        raise CalvinFormatError(
            f"{path} is not a readable CALVIN frame (truncated or corrupt npz): {err}"
        ) from err
    frame: dict[str, np.ndarray] = {}
    for key, (feature, shape) in CAMERAS.items():
        if raw[key].shape != shape or raw[key].dtype != np.uint8:
            raise CalvinFormatError(
                f"{path}: {key} is {raw[key].dtype}{raw[key].shape}, expected uint8{shape}"
            )
        frame[feature] = raw[key]
    for key, feature, size in (
        ("robot_obs", "observation.state", 15),
        ("scene_obs", "observation.environment_state", 24),
    ):
        if raw[key].shape != (size,):
            raise CalvinFormatError(f"{path}: {key} has shape {raw[key].shape}, expected ({size},)")
        frame[feature] = raw[key].astype(np.float32)
    action = raw["actions" if options.absolute_actions else "rel_actions"]
    if action.shape != (7,):
        raise CalvinFormatError(f"{path}: action has shape {action.shape}, expected (7,)")
    frame["action"] = action.astype(np.float32)
    if options.depth:
        for key, shape in DEPTH.items():
            if raw[key].shape != shape:
                raise CalvinFormatError(f"{path}: {key} has shape {raw[key].shape}, expected {shape}")
            frame[key] = raw[key].astype(np.float32)
    if options.tactile:
        for key, (feature, shape, dtype) in TACTILE.items():
            if raw[key].shape != shape:
                raise CalvinFormatError(f"{path}: {key} has shape {raw[key].shape}, expected {shape}")
            frame[feature] = raw[key].astype(dtype)
    return frame


def read_episode(options: ReadOptions, spec: EpisodeSpec) -> EpisodeFrames:
    """Worker: read the frames of one episode (runs in a reader process)."""
    split_dir = Path(spec.split_dir)
    frames = [read_calvin_frame(_frame_path(split_dir, i), options) for i in range(spec.first, spec.last + 1)]
    stacked: dict[str, np.ndarray | list[str]] = {
        key: np.stack([f[key] for f in frames]) for key in frames[0]
    }
    n = len(frames)
    stacked["calvin_scene"] = np.full((n, 1), spec.scene, dtype=np.int64)
    stacked["calvin_split"] = np.full((n, 1), spec.split, dtype=np.int64)
    stacked["calvin_frame"] = np.arange(spec.first, spec.last + 1, dtype=np.int64)[:, None]
    stacked["task"] = list(spec.tasks)
    return EpisodeFrames(stacked, extra=spec)


def features(options: ReadOptions) -> dict[str, dict]:
    names = ["height", "width", "channels"]
    out: dict[str, dict] = {
        feature: {"dtype": "video", "shape": shape, "names": names} for feature, shape in CAMERAS.values()
    }
    out["observation.state"] = {"dtype": "float32", "shape": (15,), "names": None}
    out["observation.environment_state"] = {"dtype": "float32", "shape": (24,), "names": None}
    out["action"] = {"dtype": "float32", "shape": (7,), "names": None}
    if options.depth:
        out.update({key: {"dtype": "float32", "shape": shape, "names": None} for key, shape in DEPTH.items()})
    if options.tactile:
        out.update({f: {"dtype": d, "shape": s, "names": None} for f, s, d in TACTILE.values()})
    for key in ("calvin_scene", "calvin_split", "calvin_frame"):
        out[key] = {"dtype": "int64", "shape": (1,), "names": None}
    return out


def split_folders(raw_dir: Path, split: str) -> list[tuple[str, Path]]:
    """``[(split name, folder)]``: the folder itself when it is a split folder, else its chosen split(s)."""
    if not raw_dir.is_dir():
        raise CalvinFormatError(f"{raw_dir} is not a folder; expected a CALVIN dataset or split folder")
    if (raw_dir / "ep_start_end_ids.npy").is_file():
        name = raw_dir.name if raw_dir.name in SPLITS else "training"
        return [(name, raw_dir)]
    wanted = SPLITS if split == "all" else (split,)
    found = [(name, raw_dir / name) for name in wanted if (raw_dir / name / "ep_start_end_ids.npy").is_file()]
    if not found:
        raise CalvinFormatError(
            f"{raw_dir} is not a CALVIN folder: no ep_start_end_ids.npy in it or in its {list(wanted)} subfolder(s)"
        )
    return found


def _scene_ranges(split_dir: Path) -> list[tuple[int, int, int]]:
    path = split_dir / "scene_info.npy"
    if not path.is_file():
        return []
    info = _load_pickled(path, "scene ids").item()
    ranges = []
    for name, (first, last) in info.items():
        if name not in SCENES:
            raise CalvinFormatError(f"{path}: unknown scene {name!r}; expected one of {list(SCENES)}")
        ranges.append((int(first), int(last), SCENES[name]))
    return ranges


def _scene_of(frame: int, ranges: list[tuple[int, int, int]], default: int = -1) -> int:
    return next((scene for first, last, scene in ranges if first <= frame <= last), default)


def plan_episodes(
    split_name: str,
    split_dir: Path,
    layout: str,
    window_end: str = "exclusive",
    default_task: str = "play",
    max_episode_frames: int = 2048,
    default_scene: int = -1,
) -> list[tuple[str, EpisodeSpec]]:
    """``[(resume key, EpisodeSpec)]`` of one split folder, validated against its index files."""
    segments_path = split_dir / "ep_start_end_ids.npy"
    if not segments_path.is_file():
        raise CalvinFormatError(f"missing {segments_path} (the play segments' [start, end] frame indices)")
    segments = np.asarray(_load_pickled(segments_path, "play segments"), dtype=np.int64).reshape(-1, 2)
    annotations_path = split_dir / "lang_annotations" / "auto_lang_ann.npy"
    windows: list[tuple[int, int, str]] = []
    if annotations_path.is_file():
        annotations = _load_pickled(annotations_path, "language windows").item()
        try:
            indx, sentences = annotations["info"]["indx"], annotations["language"]["ann"]
        except (KeyError, TypeError) as err:
            raise CalvinFormatError(
                f"{annotations_path}: expected {{'info': {{'indx': ...}}, 'language': {{'ann': ...}}}}, got keys "
                f"{sorted(annotations) if isinstance(annotations, dict) else type(annotations)}"
            ) from err
        if len(indx) != len(sentences):
            raise CalvinFormatError(f"{annotations_path}: {len(indx)} windows but {len(sentences)} sentences")
        extra = 1 if window_end == "inclusive" else 0
        segment_list = segments.tolist()
        for k, ((start, end), sentence) in enumerate(zip(indx, sentences)):
            last = int(end) - 1 + extra
            inside = any(s <= start and last <= e for s, e in segment_list)
            if not inside or last < start:
                raise CalvinFormatError(
                    f"{annotations_path}: window {k} ({start}, {end}) is not inside one play segment of "
                    f"{segments_path} ({segments.tolist()[:5]}...)"
                )
            windows.append((int(start), last, str(sentence)))
    elif layout == "windows":
        raise CalvinFormatError(
            f"missing {annotations_path} (the language windows the 'windows' layout needs)"
        )
    scenes = _scene_ranges(split_dir)
    split_id = SPLITS.index(split_name) if split_name in SPLITS else 0
    plan: list[tuple[str, EpisodeSpec]] = []
    if layout == "windows":
        for k, (first, last, sentence) in enumerate(windows):
            spec = EpisodeSpec(
                str(split_dir),
                split_id,
                _scene_of(first, scenes, default_scene),
                first,
                last,
                (sentence,) * (last - first + 1),
            )
            plan.append((f"{split_name}/window_{k:06d}", spec))
        return plan
    for segment_start, segment_end in segments.tolist():
        tasks = frame_instructions(segment_start, segment_end, windows, default_task)
        chunk = max_episode_frames if max_episode_frames > 0 else segment_end - segment_start + 1
        for first in range(segment_start, segment_end + 1, chunk):
            last = min(segment_end, first + chunk - 1)
            episode_tasks = tuple(tasks[first - segment_start : last - segment_start + 1])
            spec = EpisodeSpec(
                str(split_dir), split_id, _scene_of(first, scenes, default_scene), first, last, episode_tasks
            )
            plan.append((f"{split_name}/play_{first:07d}_{last:07d}", spec))
    return plan


def frame_instructions(
    first: int, last: int, windows: list[tuple[int, int, str]], default_task: str
) -> list[str]:
    """Instruction of each frame ``first .. last``: the sentence of the latest-starting window ``(start, last frame,
    sentence)`` containing it (equal starts: the later one in ``windows``), else ``default_task``.

    One sweep with a heap, O((frames + windows) log windows), as a full split has ~10^6 frames and ~10^4 windows.
    """
    ordered = sorted(
        (start, k, end, sentence)
        for k, (start, end, sentence) in enumerate(windows)
        if end >= first and start <= last
    )
    open_windows: list[tuple[int, int, int, str]] = []  # min-heap of (-start, -k, last frame, sentence)
    tasks: list[str] = []
    next_window = 0
    for frame in range(first, last + 1):
        while next_window < len(ordered) and ordered[next_window][0] <= frame:
            start, k, end, sentence = ordered[next_window]
            heapq.heappush(open_windows, (-start, -k, end, sentence))
            next_window += 1
        while open_windows and open_windows[0][2] < frame:
            heapq.heappop(open_windows)  # ended: frames only increase, so it never covers one again
        tasks.append(open_windows[0][3] if open_windows else default_task)
    return tasks


def read_fps(split_dir: Path) -> int:
    """CALVIN's control rate from ``.hydra/merged_config.yaml`` (``control_freq``), else 30 Hz."""
    config = split_dir / ".hydra" / "merged_config.yaml"
    if config.is_file():
        for line in config.read_text().splitlines():
            key, _, value = line.strip().partition(":")
            if key == "control_freq" and value.strip().isdigit():
                return int(value)
    return DEFAULT_FPS
