"""LeRobotDataset -> VPP layout, so VPP's and DeFI's original tools can read our data.

For each episode ``i`` of the dataset, under ``output_dir``::

    annotation/<split>/<i>.json            texts, videos, latent_videos (when exported), action, state,
                                           video_length, episode_id, task
    videos/<split>/<i>/<camera>.mp4        one per camera (H.264, the dataset's frame size and fps)
    latent_videos/<split>/<i>/<k>.pt       SVD latents of camera k, copied from the dataset's sidecar
                                           ``vpp_latents/`` when ``convert_vpp(export_latents=True)`` wrote it

``<camera>`` is the video key without ``observation.images.``. ``action``/``state`` are written with one row
per frame (VPP's loader takes the frame count from ``len(state)``). The JSON of an episode is written last
and atomically, so a re-run skips finished episodes and an interrupted one never looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

CAMERA_PREFIX = "observation.images."
LATENTS_DIR = "vpp_latents"
VPP_TASK_TAG = "robot_trajectory_prediction"  # the constant 'task' field of VPP's annotation files


def latent_sidecar_path(dataset_root: str | Path, camera: str, episode_index: int) -> Path:
    """Where ``convert_vpp`` keeps the SVD latent of ``camera`` (short name) for ``episode_index``."""
    return Path(dataset_root) / LATENTS_DIR / camera / f"episode_{episode_index:06d}.pt"


@dataclass
class VPPExportReport:
    """What ``export_vpp`` did: episodes written / skipped (already complete) and latent files not found."""

    output_dir: Path
    written: list[int] = field(default_factory=list)
    skipped_existing: list[int] = field(default_factory=list)
    missing_latents: list[str] = field(default_factory=list)


def write_mp4(path: Path, frames: np.ndarray, fps: int, codec: str = "libx264") -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as an mp4 (yuv420p; H and W must be even for libx264)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.mp4")
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # keep the encoder's statistics off the console
    try:
        _encode(tmp, frames, fps, codec)
    finally:
        av.logging.set_level(previous_level)
    os.replace(tmp, path)


def _encode(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        for image in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _episode_frames(dataset, episode_index: int, video_key: str) -> np.ndarray:
    """Decode one episode of one camera -> ``(T, H, W, 3)`` uint8."""
    from lerobot.datasets.video_utils import decode_video_frames

    meta = dataset.meta
    episode = meta.episodes[episode_index]
    length = int(episode["length"])
    start = float(episode[f"videos/{video_key}/from_timestamp"])
    timestamps = [start + i / meta.fps for i in range(length)]
    video_path = dataset.root / meta.get_video_file_path(episode_index, video_key)
    frames = decode_video_frames(video_path, timestamps, 0.5 / meta.fps, backend="pyav", return_uint8=True)
    return frames.permute(0, 2, 3, 1).numpy()


def export_vpp(
    repo_id: str,
    output_dir: str | Path,
    *,
    root: str | Path | None = None,
    split: str = "train",
    cameras: list[str] | None = None,
    episodes: list[int] | None = None,
    max_episodes: int | None = None,
    codec: str = "libx264",
    progress: bool = True,
) -> VPPExportReport:
    """Write a LeRobotDataset (``repo_id`` at ``root``) in the VPP layout under ``output_dir``.

    cameras: video keys (or short names) to export, in VPP camera order; default: all video keys of the
    dataset in their feature order. episodes: episode indices to export (default all, up to ``max_episodes``).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(repo_id, root=root, video_backend="pyav")
    meta = dataset.meta
    video_keys = list(meta.video_keys)
    if cameras:
        wanted = [c if c.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + c for c in cameras]
        unknown = [c for c in wanted if c not in video_keys]
        if unknown:
            raise ValueError(f"{dataset.root}: no video feature {unknown}; the dataset has {video_keys}")
        video_keys = wanted
    if not video_keys:
        raise ValueError(f"{dataset.root}: the dataset has no video features to export")
    indices = list(range(meta.total_episodes)) if episodes is None else list(episodes)
    if max_episodes is not None:
        indices = indices[:max_episodes]
    output_dir = Path(output_dir)
    report = VPPExportReport(output_dir)
    tasks_by_index = {int(row.task_index): str(task) for task, row in meta.tasks.iterrows()}
    has_state = "observation.state" in meta.features
    has_action = "action" in meta.features

    for episode_index in tqdm(indices, desc="export VPP", unit="episode", disable=not progress):
        json_path = output_dir / "annotation" / split / f"{episode_index}.json"
        if json_path.is_file():
            report.skipped_existing.append(episode_index)
            continue
        episode = meta.episodes[episode_index]
        rows = dataset.hf_dataset[int(episode["dataset_from_index"]) : int(episode["dataset_to_index"])]
        length = int(episode["length"])
        annotation: dict = {"task": VPP_TASK_TAG}
        texts = list(dict.fromkeys(tasks_by_index[int(t)] for t in rows["task_index"]))
        annotation["texts"] = texts
        annotation["videos"] = []
        for key in video_keys:
            camera = key.removeprefix(CAMERA_PREFIX)
            relative = f"videos/{split}/{episode_index}/{camera}.mp4"
            write_mp4(output_dir / relative, _episode_frames(dataset, episode_index, key), meta.fps, codec)
            annotation["videos"].append({"video_path": relative})
        latents = []
        for k, key in enumerate(video_keys):
            source = latent_sidecar_path(dataset.root, key.removeprefix(CAMERA_PREFIX), episode_index)
            if not source.is_file():
                report.missing_latents.append(str(source))
                continue
            relative = f"latent_videos/{split}/{episode_index}/{k}.pt"
            (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, output_dir / relative)
            latents.append({"latent_video_path": relative})
        if len(latents) == len(video_keys):
            annotation["latent_videos"] = latents
        if has_action:
            annotation["action"] = np.stack([np.asarray(a) for a in rows["action"]]).astype(float).tolist()
        if has_state:
            annotation["state"] = (
                np.stack([np.asarray(s) for s in rows["observation.state"]]).astype(float).tolist()
            )
        annotation["video_length"] = length
        annotation["episode_id"] = str(episode_index)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(annotation))
        os.replace(tmp, json_path)
        report.written.append(episode_index)
    if report.missing_latents:
        logger.info(
            "%d latent file(s) not found (annotations written without latent_videos)",
            len(report.missing_latents),
        )
    return report
