"""Reading the VPP video-prediction format (what DeFI's GFDM stage trains on; spec 2.3).

Layout of one dataset folder (``bridge``, ``rt1``, ``sthv2``, ``calvin``, ...)::

    annotation/<split>/<id>.json
    videos/<split>/<id>/<cam>.mp4          (or a flat videos/<id>.webm for Something-Something-v2)
    videos/<split>/<id>/{state,action}.npy (optional)
    latent_videos[_svd]/<split>/<id>/<k>.pt  (optional SVD-VAE latents, float32 (T, 4, 32, 32))

Annotation JSON keys: ``texts`` (``texts[0]`` is the instruction), ``videos`` (one ``{"video_path"}`` per
camera, relative to the dataset folder), ``latent_videos`` (one ``{"latent_video_path"}`` per camera),
``state``/``states`` and ``action``/``actions`` (per-frame lists), ``video_length``, ``episode_id``.
The number of frames ``n`` is ``len(state)`` when a state list is present, else ``video_length`` - the
rule of VPP's loader.

Camera names: the video file stem (``rgb.mp4`` -> ``rgb``) when it is a name (starts with a letter and
is not the annotation id), else ``camera<k>`` (``videos/872.webm``, ``0.mp4``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

logger = logging.getLogger(__name__)

LATENT_FOLDERS = ("latent_videos", "latent_videos_svd")


class VPPFormatError(ValueError):
    """A VPP annotation / video that does not match the format; the message names the file and field."""


@dataclass
class VPPAnnotation:
    """One parsed annotation JSON (paths resolved against the dataset folder).

    actions: ``(n_a, D_a)`` float32 or None; states: ``(n, D_s)`` float32 or None.
    latent_paths[k] is None when camera k's latent file is absent.
    """

    json_path: Path
    dataset_dir: Path
    split: str
    annotation_id: str
    instruction: str
    num_frames: int
    camera_names: list[str]
    video_paths: list[Path]
    latent_paths: list[Path | None]
    declared_latent_paths: list[str]
    actions: np.ndarray | None = None
    states: np.ndarray | None = None
    episode_id: str | None = None


def find_annotations(dataset_dir: str | Path, splits: list[str] | None = None) -> list[tuple[str, Path]]:
    """``[(split, json_path)]`` of a VPP dataset folder, sorted by split then numeric id."""
    dataset_dir = Path(dataset_dir)
    root = dataset_dir / "annotation"
    if not root.is_dir():
        raise VPPFormatError(
            f"{root} not found: a VPP dataset folder holds annotation/<split>/<id>.json and videos/ "
            "(e.g. bridge/annotation/val/2.json); pass the dataset folder as --raw-dir"
        )
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = available if splits is None else splits
    missing = [s for s in wanted if s not in available]
    if missing:
        raise VPPFormatError(f"{root}: no split folder {missing}; found {available}")
    found = []
    for split in wanted:
        files = sorted(
            (root / split).glob("*.json"), key=lambda p: (not p.stem.isdigit(), _numeric(p.stem), p.stem)
        )
        found.extend((split, p) for p in files)
    if not found:
        raise VPPFormatError(f"{root}: no annotation JSON files in splits {wanted}")
    return found


def _numeric(stem: str) -> int:
    return int(stem) if stem.isdigit() else 0


def _camera_name(video_path: str, index: int, annotation_id: str) -> str:
    stem = Path(video_path).stem
    if stem and stem[0].isalpha() and stem != annotation_id and stem.replace("_", "").isalnum():
        return stem
    return f"camera{index}"


def _per_frame_array(
    data: dict, keys: tuple[str, ...], json_path: Path
) -> tuple[str | None, np.ndarray | None]:
    for key in keys:
        if key not in data:
            continue
        try:
            array = np.asarray(data[key], dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise VPPFormatError(
                f"{json_path}: field {key!r} is not a list of equal-length number lists ({err})"
            ) from err
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] == 0:
            raise VPPFormatError(
                f"{json_path}: field {key!r} must be a non-empty per-frame list (shape (n, D)), got {array.shape}"
            )
        return key, array
    return None, None


def read_annotation(json_path: str | Path, dataset_dir: str | Path, split: str) -> VPPAnnotation:
    """Parse and validate one annotation JSON (does not open the videos)."""
    json_path, dataset_dir = Path(json_path), Path(dataset_dir)
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise VPPFormatError(f"{json_path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise VPPFormatError(f"{json_path}: expected a JSON object, got {type(data).__name__}")
    annotation_id = json_path.stem

    texts = data.get("texts")
    if not isinstance(texts, list) or not texts or not isinstance(texts[0], str) or not texts[0].strip():
        raise VPPFormatError(
            f"{json_path}: field 'texts' must be a non-empty list of instructions (texts[0] is used)"
        )
    videos = data.get("videos")
    if not isinstance(videos, list) or not videos:
        raise VPPFormatError(f"{json_path}: field 'videos' must be a non-empty list of {{'video_path': ...}}")
    video_rel = []
    for k, entry in enumerate(videos):
        if not isinstance(entry, dict) or not isinstance(entry.get("video_path"), str):
            raise VPPFormatError(f"{json_path}: field 'videos[{k}]' has no 'video_path'")
        video_rel.append(entry["video_path"])
    video_paths = [dataset_dir / rel for rel in video_rel]
    for k, path in enumerate(video_paths):
        if not path.is_file():
            raise VPPFormatError(f"{json_path}: videos[{k}].video_path -> {path} does not exist")
    camera_names = [_camera_name(rel, k, annotation_id) for k, rel in enumerate(video_rel)]
    if len(set(camera_names)) != len(camera_names):
        camera_names = [f"camera{k}" for k in range(len(video_rel))]

    _, states = _per_frame_array(data, ("state", "states"), json_path)
    action_key, actions = _per_frame_array(data, ("action", "actions"), json_path)
    episode_dir = dataset_dir / "videos" / split / annotation_id
    if states is None and (episode_dir / "state.npy").is_file():
        states = np.load(episode_dir / "state.npy").astype(np.float32)
        states = states[:, None] if states.ndim == 1 else states
    if actions is None and (episode_dir / "action.npy").is_file():
        actions = np.load(episode_dir / "action.npy").astype(np.float32)
        actions = actions[:, None] if actions.ndim == 1 else actions
        action_key = "action.npy"

    if states is not None:
        num_frames = len(states)
    elif "video_length" in data:
        if not isinstance(data["video_length"], int) or data["video_length"] <= 0:
            raise VPPFormatError(
                f"{json_path}: field 'video_length' must be a positive int, got {data['video_length']!r}"
            )
        num_frames = data["video_length"]
    else:
        raise VPPFormatError(
            f"{json_path}: missing field 'state' (per-frame list) or 'video_length' (int): one of them gives the "
            "number of frames"
        )
    if actions is not None and len(actions) not in (num_frames - 1, num_frames):
        raise VPPFormatError(
            f"{json_path}: field {action_key!r} has {len(actions)} rows; expected {num_frames} or {num_frames - 1} "
            f"for {num_frames} frames"
        )

    declared_latents, latent_paths = [], []
    for k, entry in enumerate(data.get("latent_videos") or []):
        rel = entry.get("latent_video_path") if isinstance(entry, dict) else None
        if not isinstance(rel, str):
            raise VPPFormatError(f"{json_path}: field 'latent_videos[{k}]' has no 'latent_video_path'")
        declared_latents.append(rel)
        latent_paths.append(_resolve_latent(dataset_dir, rel))
    episode_id = data.get("episode_id")
    return VPPAnnotation(
        json_path=json_path,
        dataset_dir=dataset_dir,
        split=split,
        annotation_id=annotation_id,
        instruction=texts[0].strip(),
        num_frames=num_frames,
        camera_names=camera_names,
        video_paths=video_paths,
        latent_paths=latent_paths,
        declared_latent_paths=declared_latents,
        actions=actions,
        states=states,
        episode_id=None if episode_id is None else str(episode_id),
    )


def _resolve_latent(dataset_dir: Path, rel: str) -> Path | None:
    """The latent file, trying the other folder name (latent_videos <-> latent_videos_svd) as VPP's loader does."""
    path = dataset_dir / rel
    if path.is_file():
        return path
    parts = Path(rel).parts
    if parts and parts[0] in LATENT_FOLDERS:
        other = LATENT_FOLDERS[1 - LATENT_FOLDERS.index(parts[0])]
        alternative = dataset_dir / other / Path(*parts[1:])
        if alternative.is_file():
            return alternative
    return None


def _undecodable(path: str | Path, err: Exception) -> VPPFormatError:
    """The one error of every video that cannot be opened or decoded (same text in planning and reading)."""
    return VPPFormatError(f"{path}: cannot decode the video ({err})")


def video_fps(path: str | Path) -> float:
    """Average frame rate of the first video stream; ``VPPFormatError`` when the file is not a readable video."""
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
    except (av.error.FFmpegError, IndexError) as err:
        raise _undecodable(path, err) from err
    return float(rate) if rate else 0.0


def read_video(path: str | Path, num_frames: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode the first ``num_frames`` frames -> ``(num_frames, H, W, 3)`` uint8 RGB.

    size: ``(height, width)`` to resize to (area interpolation), or None for the native size.
    Raises ``VPPFormatError`` when the video is unreadable or shorter than ``num_frames``.
    """
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if size is not None:
                    frame = frame.reformat(
                        width=size[1], height=size[0], format="rgb24", interpolation="AREA"
                    )
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == num_frames:
                    break
    except (av.error.FFmpegError, IndexError) as err:
        raise _undecodable(path, err) from err
    if len(frames) < num_frames:
        raise VPPFormatError(
            f"{path}: the video has {len(frames)} frames but the annotation declares {num_frames} "
            "(len(state) or video_length)"
        )
    return np.stack(frames)


# --------------------------------------------------------------------------------------------- plan / frames
CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"


def video_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the first video stream; ``VPPFormatError`` when the file is not a readable video."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.codec_context.height, stream.codec_context.width
    except (av.error.FFmpegError, IndexError) as err:
        raise _undecodable(path, err) from err


@dataclass
class VPPPlan:
    """The LeRobot schema of one VPP dataset folder, taken from its first readable annotation.

    image_size: ``(H, W)`` every camera is resized to, or None to keep the native size (then every episode
    must match the first one). action_dim / state_dim: None when the first annotation has no such field.
    """

    dataset_dir: Path
    camera_names: list[str]
    image_sizes: dict[str, tuple[int, int]]
    resize: bool
    fps: int
    action_dim: int | None
    state_dim: int | None

    def features(self) -> dict[str, dict]:
        features = {
            CAMERA_PREFIX + cam: {
                "dtype": "video",
                "shape": (*self.image_sizes[cam], 3),
                "names": ["height", "width", "channels"],
            }
            for cam in self.camera_names
        }
        if self.state_dim is not None:
            features[STATE_KEY] = {"dtype": "float32", "shape": (self.state_dim,), "names": None}
        if self.action_dim is not None:
            features[ACTION_KEY] = {"dtype": "float32", "shape": (self.action_dim,), "names": None}
        return features


def plan_vpp_conversion(
    dataset_dir: str | Path,
    first: VPPAnnotation,
    image_size: tuple[int, int] | None = (256, 256),
    fps: int | None = None,
) -> VPPPlan:
    """Schema of the LeRobot dataset built from ``dataset_dir``, using annotation ``first`` as the reference."""
    if image_size is None:
        sizes = {cam: video_size(path) for cam, path in zip(first.camera_names, first.video_paths)}
    else:
        sizes = dict.fromkeys(first.camera_names, tuple(image_size))
    if fps is None:
        rate = video_fps(first.video_paths[0])
        if rate <= 0:
            raise VPPFormatError(f"{first.video_paths[0]}: the video has no frame rate; pass --fps")
        fps = round(rate)
    return VPPPlan(
        dataset_dir=Path(dataset_dir),
        camera_names=list(first.camera_names),
        image_sizes=sizes,
        resize=image_size is not None,
        fps=int(fps),
        action_dim=None if first.actions is None else int(first.actions.shape[1]),
        state_dim=None if first.states is None else int(first.states.shape[1]),
    )


def _check_vector(annotation: VPPAnnotation, name: str, values: np.ndarray | None, dim: int | None) -> None:
    if dim is None:
        return
    if values is None:
        raise VPPFormatError(
            f"{annotation.json_path}: missing field {name!r}/{name}s, which the dataset's first annotation has"
        )
    if values.shape[1] != dim:
        raise VPPFormatError(
            f"{annotation.json_path}: field {name!r} has {values.shape[1]} values per frame, expected {dim}"
        )


def read_vpp_episode(plan: VPPPlan, annotation: VPPAnnotation) -> dict[str, np.ndarray | list[str]]:
    """Decode one annotation -> ``{feature key: (n, ...) array, "task": [n str]}``.

    A ``(n - 1, D)`` action list (one action per transition, as in VPP's bridge/rt1 samples) gets the last
    action repeated for the final frame, so every frame carries an action.
    """
    if annotation.camera_names != plan.camera_names:
        raise VPPFormatError(
            f"{annotation.json_path}: field 'videos' gives cameras {annotation.camera_names}, the dataset has "
            f"{plan.camera_names}"
        )
    n = annotation.num_frames
    frames: dict[str, np.ndarray | list[str]] = {"task": [annotation.instruction] * n}
    for cam, path in zip(annotation.camera_names, annotation.video_paths):
        video = read_video(path, n, plan.image_sizes[cam] if plan.resize else None)
        if video.shape[1:3] != plan.image_sizes[cam]:
            raise VPPFormatError(
                f"{path}: frames are {video.shape[2]}x{video.shape[1]}, the dataset's camera {cam!r} is "
                f"{plan.image_sizes[cam][1]}x{plan.image_sizes[cam][0]}; pass --image-size H W to resize"
            )
        frames[CAMERA_PREFIX + cam] = video
    _check_vector(annotation, "state", annotation.states, plan.state_dim)
    _check_vector(annotation, "action", annotation.actions, plan.action_dim)
    if plan.state_dim is not None:
        frames[STATE_KEY] = annotation.states
    if plan.action_dim is not None:
        actions = annotation.actions
        if len(actions) == n - 1:
            actions = np.concatenate([actions, actions[-1:]], axis=0)
        frames[ACTION_KEY] = actions
    return frames
