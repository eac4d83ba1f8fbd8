"""``lerobot-defi-convert calvin``: a CALVIN dataset (``task_ABC_D``, ``task_D_D``, ``calvin_debug_dataset``)
-> LeRobotDataset v3.

Input: a split folder (``training/`` or ``validation/``: ``episode_XXXXXXX.npz`` per frame,
``ep_start_end_ids.npy``, ``lang_annotations/auto_lang_ann.npy``, ``scene_info.npy``, ``statistics.yaml``,
``.hydra/merged_config.yaml``), or the dataset folder holding both splits (``--split`` picks).

Output features:

* ``observation.images.static`` (200x200x3) and ``observation.images.gripper`` (84x84x3) as videos;
* ``observation.state`` = ``robot_obs`` (15,), ``observation.environment_state`` = ``scene_obs`` (24,);
* ``action`` = ``rel_actions`` (7,) (``--absolute_actions=true``: ``actions``, the next TCP pose + gripper);
* ``task`` = the instruction sentence;
* ``calvin_scene`` (0..3 = scene A..D from ``scene_info.npy``; ``--scene`` for frames it does not cover, else
  -1), ``calvin_split`` (0 training, 1 validation) and ``calvin_frame`` (CALVIN's global frame index), per
  frame; policies ignore these keys;
* opt-in: ``depth_static`` (200x200) / ``depth_gripper`` (84x84) float32 (``--depth=true``), ``tactile_rgb``
  (160x120x6) / ``tactile_depth`` (160x120x2) (``--tactile=true``, when the release has them).

Layouts:

* ``windows`` (default; what DeFI trains on): each language-annotated window is one episode carrying its
  instruction. A window ``(start, end)`` covers frames ``start .. end-1`` as CALVIN's annotator writes them
  (``--window_end=inclusive`` adds frame ``end``, as the original training code reads one frame more).
* ``play`` (video pretraining): each continuous play segment of ``ep_start_end_ids.npy`` is cut into
  episodes of at most ``--max_episode_frames`` frames (memory stays flat); every frame carries the instruction
  of the latest-starting window that contains it, else ``--default_task``.

``meta/calvin_episodes.json`` lists per episode its split, scene, CALVIN frame range and instruction (select
ABC->D with ``calvin_scene``); ``meta/calvin_statistics/<split>.yaml`` keeps CALVIN's own statistics (LeRobot's
stats are recomputed from the data). Resume, ``--skip_bad=true``, parallel reading and
``--push_to_hub=true`` come from ``episode_writer``.

Example (the full ABC->D training split)::

    lerobot-defi-convert calvin --raw_dir=/data/calvin/task_ABC_D --split=training \\
        --repo_id=me/calvin_abc_windows --num_workers=2
"""

from __future__ import annotations

import functools
import heapq
import io
import json
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ISA-L's inflate is ~2.5x faster than zlib's on CALVIN frames; reading competes with video encoding.
from isal.isal_zlib import decompress as _inflate

from lerobot_defi.command_line import CommandLineError, parse_command_line

from .episode_writer import (
    WRITER_VIDEO_BACKEND,
    ConversionInputError,
    ConversionOutputConfig,
    EpisodeFrames,
    default_root,
    report_bad_input,
    write_episodes,
)

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
CONVERSION_OPTIONS_FILE = "calvin_conversion.json"


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


def convert_calvin(
    raw_dir: str | Path,
    repo_id: str,
    root: str | Path | None = None,
    *,
    layout: str = "windows",
    split: str = "training",
    absolute_actions: bool = False,
    depth: bool = False,
    tactile: bool = False,
    window_end: str = "exclusive",
    default_task: str = "play",
    max_episode_frames: int = 2048,
    scene: str | None = None,
    max_episodes: int | None = None,
    fps: int | None = None,
    num_workers: int = 0,
    skip_bad: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 200,
    video_file_size_mb: int = 20,
    push_to_hub: bool = False,
    private: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a CALVIN split (or dataset) folder; returns the LeRobotDataset root. See the module docstring."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'windows' or 'play', got {layout!r}")
    if scene is not None and scene not in tuple(SCENE_LETTERS):
        raise ValueError(f"scene must be one of {list(SCENE_LETTERS)}, got {scene!r}")
    default_scene = SCENE_LETTERS.index(scene) if scene is not None else -1
    raw_dir = Path(raw_dir)
    root = Path(root) if root is not None else default_root(repo_id)
    folders = split_folders(raw_dir, split)
    planned = [
        item
        for name, folder in folders
        for item in plan_episodes(
            name, folder, layout, window_end, default_task, max_episode_frames, default_scene
        )
    ]
    items = planned[:max_episodes] if max_episodes is not None else planned
    if not items:
        raise CalvinFormatError(
            f"{raw_dir}: nothing to convert (no {'language windows' if layout == 'windows' else 'play segments'})"
        )
    options = ReadOptions(absolute_actions=absolute_actions, depth=depth, tactile=tactile)
    conversion = {
        "raw_dir": str(raw_dir.resolve()),
        "splits": [name for name, _ in folders],
        "layout": layout,
        "window_end": window_end,
        "default_task": default_task,
        "max_episode_frames": max_episode_frames,
        "scene": scene,
        **vars(options),
    }
    options_file = root / "meta" / CONVERSION_OPTIONS_FILE
    if not overwrite and options_file.is_file():
        previous = json.loads(options_file.read_text())
        changed = {
            k: (previous.get(k), v) for k, v in conversion.items() if previous.get(k) != v and k != "raw_dir"
        }
        if changed:
            listed = ", ".join(f"{k}: {then!r} then, {now!r} now" for k, (then, now) in changed.items())
            raise CalvinFormatError(
                f"{root} was converted with other options ({listed}); resuming would mix them: use another "
                "--root or pass --overwrite=true"
            )
    report = write_episodes(
        repo_id=repo_id,
        root=root,
        fps=fps or read_fps(folders[0][1]),
        features=features(options),
        items=items,
        read_episode=functools.partial(read_episode, options),
        bad_input_errors=(CalvinFormatError,),
        robot_type="franka_calvin",
        num_workers=num_workers,
        skip_bad=skip_bad,
        overwrite=overwrite,
        checkpoint_every=checkpoint_every,
        video_files_size_in_mb=video_file_size_mb,
        push_to_hub=False,
        progress=progress,
        description=f"calvin {layout}",
    )
    _write_calvin_meta(root, folders, planned)
    options_file.write_text(json.dumps(conversion, indent=1))
    if push_to_hub:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        LeRobotDataset(repo_id, root=root, video_backend=WRITER_VIDEO_BACKEND).push_to_hub(private=private)
    if report.bad:
        print(report.summary(), file=sys.stderr)
    return root


def _write_calvin_meta(
    root: Path, folders: list[tuple[str, Path]], items: list[tuple[str, EpisodeSpec]]
) -> None:
    """``meta/calvin_episodes.json`` (episode -> split, scene, frames, instruction) and CALVIN's statistics."""
    import shutil

    specs = dict(items)
    progress = json.loads((root / "conversion_progress.json").read_text())
    episodes = []
    for index, key in enumerate(progress["episodes"]):
        spec = specs.get(key)
        if spec is None:
            continue
        episodes.append(
            {
                "episode_index": index,
                "source": key,
                "split": SPLITS[spec.split],
                "scene": SCENE_LETTERS[spec.scene] if spec.scene >= 0 else None,
                "calvin_frames": [spec.first, spec.last],
                "tasks": list(dict.fromkeys(spec.tasks)),  # distinct instructions, in frame order
            }
        )
    (root / "meta" / "calvin_episodes.json").write_text(json.dumps(episodes, indent=1))
    statistics_dir = root / "meta" / "calvin_statistics"
    for name, folder in folders:
        if (folder / "statistics.yaml").is_file():
            statistics_dir.mkdir(exist_ok=True)
            shutil.copy(folder / "statistics.yaml", statistics_dir / f"{name}.yaml")


@dataclass(kw_only=True)
class CalvinConvertConfig(ConversionOutputConfig):
    """lerobot-defi-convert calvin: a CALVIN dataset or split folder -> LeRobotDataset v3 (see the module docstring
    of lerobot_defi.conversions.calvin). Example:
    lerobot-defi-convert calvin --raw_dir=/data/calvin/task_ABC_D --split=training --repo_id=me/calvin_abc"""

    # CALVIN dataset folder (with training/ and validation/) or split folder.
    raw_dir: Path
    # "windows": one episode per language window (what DeFI trains on); "play": play segments (video pretraining).
    layout: str = "windows"
    # Split of a dataset folder: training, validation or all.
    split: str = "training"
    # Actions = the next TCP pose + gripper (CALVIN's `actions`) instead of the relative `rel_actions`.
    absolute_actions: bool = False
    # Also store depth_static / depth_gripper.
    depth: bool = False
    # Also store the tactile arrays.
    tactile: bool = False
    # "exclusive": a window (start, end) is frames start .. end-1; "inclusive" adds frame end (original training).
    window_end: str = "exclusive"
    # Instruction of play frames outside every window.
    default_task: str = "play"
    # Play layout: frames per episode.
    max_episode_frames: int = 2048
    # Scene (A, B, C or D) of the frames scene_info.npy does not cover (or when the split has none).
    scene: str | None = None
    # Frame rate (default: control_freq of .hydra/merged_config.yaml, else 30).
    fps: int | None = None
    # Episodes between checkpoints a killed run resumes from (each starts new data/video files).
    checkpoint_every: int = 200
    # Video file size (MB) at which LeRobot starts a new file (it rewrites the current file per episode).
    video_file_size_mb: int = 20
    # Reader processes decoding the npz frames while the main process encodes video (0: read in the main process).
    num_workers: int = 2

    def __post_init__(self):
        for name, value, allowed in (
            ("layout", self.layout, LAYOUTS),
            ("split", self.split, (*SPLITS, "all")),
            ("window_end", self.window_end, WINDOW_ENDS),
            ("scene", self.scene, (*SCENE_LETTERS, None)),
        ):
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {list(allowed)}, got {value!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_command_line(CalvinConvertConfig, argv, prog="lerobot-defi-convert calvin")
        root = convert_calvin(
            cfg.raw_dir, cfg.repo_id, cfg.root, layout=cfg.layout, split=cfg.split,
            absolute_actions=cfg.absolute_actions, depth=cfg.depth, tactile=cfg.tactile, window_end=cfg.window_end,
            default_task=cfg.default_task, max_episode_frames=cfg.max_episode_frames, scene=cfg.scene,
            max_episodes=cfg.max_episodes, fps=cfg.fps, num_workers=cfg.num_workers, skip_bad=cfg.skip_bad,
            overwrite=cfg.overwrite, checkpoint_every=cfg.checkpoint_every,
            video_file_size_mb=cfg.video_file_size_mb, push_to_hub=cfg.push_to_hub, private=cfg.private,
        )  # fmt: skip
    except (CommandLineError, ConversionInputError) as err:
        return report_bad_input(err)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
