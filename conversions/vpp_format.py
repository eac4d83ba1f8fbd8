"""The VPP video-prediction format in one place: folder layout, annotation schema, camera names, latent files
(docs/method.md §2.3). The converter (``vpp``), the exporter (``vpp_export``) and the GFDM trainer's direct VPP
reading use this module and nothing else to read or write the format.

Layout of one dataset folder (``bridge``, ``rt1``, ``sthv2``, ``calvin``, ...)::

    annotation/<split>/<id>.json
    videos/<split>/<id>/<camera>.mp4         (or a flat videos/<id>.webm for Something-Something-v2)
    videos/<split>/<id>/{state,action}.npy   (optional)
    latent_videos[_svd]/<split>/<id>/<k>.pt  (optional SVD-VAE latents of camera k, float32 (T, 4, 32, 32))

Annotation JSON keys: ``texts`` (``texts[0]`` is the instruction), ``videos`` (one ``{"video_path"}`` per
camera, relative to the dataset folder), ``latent_videos`` (one ``{"latent_video_path"}`` per camera),
``state``/``states`` and ``action``/``actions`` (per-frame lists), ``video_length``, ``episode_id`` and the
constant ``task`` tag. The number of frames ``n`` is ``len(state)`` when a state list is present, else
``video_length`` - the rule of VPP's loader. A latent path that does not exist is also looked for under the
other latent folder name (``latent_videos`` <-> ``latent_videos_svd``), as VPP's loader does.

Camera names: the video file stem (``rgb.mp4`` -> ``rgb``) when it is a name (starts with a letter and is not
the annotation id), else ``camera<k>`` (``videos/872.webm``, ``0.mp4``). In a LeRobotDataset a camera is the
video feature ``observation.images.<name>``, and episode latents live in a latent folder as
``<latent folder>/<name>/episode_<index:06d>.pt`` (the converter's ``<dataset root>/vpp_latents`` sidecar, the
GFDM trainer's latent cache).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ANNOTATION_DIR = "annotation"
VIDEOS_DIR = "videos"
LATENT_FOLDERS = ("latent_videos", "latent_videos_svd")  # the first is what the exporter writes
VPP_TASK_TAG = "robot_trajectory_prediction"  # the constant 'task' field of VPP's annotation files
# The LeRobotDataset side: camera features, and the folder beside a converted dataset holding its latents.
CAMERA_PREFIX = "observation.images."
LATENT_SIDECAR_DIR = "vpp_latents"


class VPPFormatError(ValueError):
    """A VPP annotation / video that does not match the format; the message names the file and field."""


# --------------------------------------------------------------------------------------------------- paths
def annotation_path(dataset_dir: str | Path, split: str, annotation_id: str | int) -> Path:
    """``<dataset_dir>/annotation/<split>/<id>.json``."""
    return Path(dataset_dir) / ANNOTATION_DIR / split / f"{annotation_id}.json"


def video_relpath(split: str, annotation_id: str | int, camera: str) -> str:
    """``videos/<split>/<id>/<camera>.mp4``, relative to the dataset folder (as annotations store it)."""
    return f"{VIDEOS_DIR}/{split}/{annotation_id}/{camera}.mp4"


def latent_relpath(split: str, annotation_id: str | int, camera_index: int) -> str:
    """``latent_videos/<split>/<id>/<k>.pt``, relative to the dataset folder (as annotations store it)."""
    return f"{LATENT_FOLDERS[0]}/{split}/{annotation_id}/{camera_index}.pt"


def resolve_latent(dataset_dir: str | Path, relative: str) -> Path | None:
    """The latent file ``relative`` names, also looked for under the other latent folder name; None if absent."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / relative
    if path.is_file():
        return path
    parts = Path(relative).parts
    if parts and parts[0] in LATENT_FOLDERS:
        other = LATENT_FOLDERS[1 - LATENT_FOLDERS.index(parts[0])]
        alternative = dataset_dir / other / Path(*parts[1:])
        if alternative.is_file():
            return alternative
    return None


def annotation_files(dataset_dir: str | Path, split: str) -> list[Path]:
    """The annotation JSON files of one split, sorted by numeric id (then name); [] when there are none."""
    folder = Path(dataset_dir) / ANNOTATION_DIR / split
    return sorted(folder.glob("*.json"), key=lambda p: (not p.stem.isdigit(), _numeric(p.stem), p.stem))


def find_annotations(dataset_dir: str | Path, splits: list[str] | None = None) -> list[tuple[str, Path]]:
    """``[(split, json_path)]`` of a VPP dataset folder, sorted by split then numeric id."""
    dataset_dir = Path(dataset_dir)
    root = dataset_dir / ANNOTATION_DIR
    if not root.is_dir():
        raise VPPFormatError(
            f"{root} not found: a VPP dataset folder holds annotation/<split>/<id>.json and videos/ "
            "(e.g. bridge/annotation/val/2.json); pass the dataset folder as --raw_dir"
        )
    available = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = available if splits is None else splits
    missing = [s for s in wanted if s not in available]
    if missing:
        raise VPPFormatError(f"{root}: no split folder {missing}; found {available}")
    found = [(split, path) for split in wanted for path in annotation_files(dataset_dir, split)]
    if not found:
        raise VPPFormatError(f"{root}: no annotation JSON files in splits {wanted}")
    return found


def _numeric(stem: str) -> int:
    return int(stem) if stem.isdigit() else 0


# -------------------------------------------------------------------------------------------------- cameras
def camera_name(video_path: str, index: int, annotation_id: str) -> str:
    """The camera name of ``videos[index]`` (see the module docstring)."""
    stem = Path(video_path).stem
    if stem and stem[0].isalpha() and stem != annotation_id and stem.replace("_", "").isalnum():
        return stem
    return f"camera{index}"


def camera_key(camera: str) -> str:
    """``static`` or ``observation.images.static`` -> ``observation.images.static`` (the LeRobot feature)."""
    return camera if camera.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + camera


def camera_short_name(key: str) -> str:
    """``observation.images.static`` -> ``static`` (the VPP video name and the folder of its latents)."""
    return key.removeprefix(CAMERA_PREFIX)


# --------------------------------------------------------------------------------------------- latent files
def latent_file(latent_dir: str | Path, camera: str, episode_index: int) -> Path:
    """``<latent_dir>/<camera short name>/episode_<index:06d>.pt``: one camera's latents of one LeRobot episode."""
    return Path(latent_dir) / camera_short_name(camera) / f"episode_{episode_index:06d}.pt"


def latent_sidecar_path(dataset_root: str | Path, camera: str, episode_index: int) -> Path:
    """Where the converter keeps the SVD latents of ``camera`` for ``episode_index`` beside a LeRobotDataset."""
    return latent_file(Path(dataset_root) / LATENT_SIDECAR_DIR, camera, episode_index)


def check_latent(path: str | Path, num_frames: int) -> str | None:
    """Why the latent file cannot be used, or None when it is a float tensor ``(num_frames, 4, h, w)``."""
    import torch

    try:
        latent = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable files
        return f"cannot be loaded ({type(err).__name__}: {err})"
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4 or not latent.is_floating_point():
        return f"expected a float tensor (T, 4, h, w), got {getattr(latent, 'shape', type(latent).__name__)}"
    if latent.shape[0] != num_frames:
        return f"has {latent.shape[0]} frames, the annotation has {num_frames}"
    return None


# ---------------------------------------------------------------------------------------------- annotations
@dataclass
class VPPAnnotation:
    """One parsed annotation JSON (paths resolved against the dataset folder).

    actions: ``(n_a, D_a)`` float32 or None; states: ``(n, D_s)`` float32 or None.
    latent_paths[k] is None when camera k's latent file is absent; declared_latent_paths[k] is the path the JSON
    gives for it.
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


def _per_frame_npy(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    array = np.load(path).astype(np.float32)
    return array[:, None] if array.ndim == 1 else array


def read_annotation(
    json_path: str | Path, dataset_dir: str | Path, split: str, *, videos: bool = True
) -> VPPAnnotation:
    """Parse and validate one annotation JSON (does not open the videos).

    videos: check the ``videos`` field and that every video file exists (what a conversion needs); False reads
    an annotation for its text, frame count and latents only (training from the released latents, where the
    videos may be absent): ``videos`` is then optional and its files are not looked at.
    """
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
    video_rel = _video_paths(data, json_path, required=videos)
    video_paths = [dataset_dir / rel for rel in video_rel]
    if videos:
        for k, path in enumerate(video_paths):
            if not path.is_file():
                raise VPPFormatError(f"{json_path}: videos[{k}].video_path -> {path} does not exist")
    camera_names = [camera_name(rel, k, annotation_id) for k, rel in enumerate(video_rel)]
    if len(set(camera_names)) != len(camera_names):
        camera_names = [f"camera{k}" for k in range(len(video_rel))]

    _, states = _per_frame_array(data, ("state", "states"), json_path)
    action_key, actions = _per_frame_array(data, ("action", "actions"), json_path)
    episode_dir = dataset_dir / VIDEOS_DIR / split / annotation_id
    if states is None:
        states = _per_frame_npy(episode_dir / "state.npy")
    if actions is None:
        actions = _per_frame_npy(episode_dir / "action.npy")
        action_key = "action.npy" if actions is not None else None

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
        latent_paths.append(resolve_latent(dataset_dir, rel))
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


def _video_paths(data: dict, json_path: Path, required: bool) -> list[str]:
    videos = data.get("videos")
    if videos is None and not required:
        return []
    if not isinstance(videos, list) or not videos:
        raise VPPFormatError(f"{json_path}: field 'videos' must be a non-empty list of {{'video_path': ...}}")
    paths = []
    for k, entry in enumerate(videos):
        if not isinstance(entry, dict) or not isinstance(entry.get("video_path"), str):
            raise VPPFormatError(f"{json_path}: field 'videos[{k}]' has no 'video_path'")
        paths.append(entry["video_path"])
    return paths


def write_annotation(json_path: str | Path, annotation: dict) -> None:
    """Write an annotation JSON atomically (a reader never sees a half-written file; the exporter writes it
    last, so an episode whose JSON exists is complete)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(annotation))
    os.replace(tmp, json_path)
