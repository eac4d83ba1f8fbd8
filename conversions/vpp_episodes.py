"""A VPP dataset folder as LeRobot episodes: the schema of the converted dataset (``VPPPlan``) and the frames of
one annotation (``read_vpp_episode``), decoding its videos with PyAV. The format itself (annotation schema,
camera names, latent files) is ``vpp_format``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .vpp_format import VPPAnnotation, VPPFormatError, camera_key


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
            camera_key(cam): {
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
            raise VPPFormatError(f"{first.video_paths[0]}: the video has no frame rate; pass --fps=N")
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
                f"{plan.image_sizes[cam][1]}x{plan.image_sizes[cam][0]}; pass --image_size='[H,W]' to resize"
            )
        frames[camera_key(cam)] = video
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
