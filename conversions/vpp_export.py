"""LeRobotDataset -> VPP layout, so VPP's and DeFI's original tools can read our data.

For each episode ``i`` of the dataset, under ``output_dir`` (the layout of ``vpp_format``)::

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

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lerobot_defi.video_writer import DEFAULT_CODEC, write_video

from .vpp_format import (
    VPP_TASK_TAG,
    annotation_path,
    camera_key,
    camera_short_name,
    latent_relpath,
    latent_sidecar_path,
    video_relpath,
    write_annotation,
)

logger = logging.getLogger(__name__)


@dataclass
class VPPExportReport:
    """What ``export_vpp`` did: episodes written / skipped (already complete) and latent files not found."""

    output_dir: Path
    written: list[int] = field(default_factory=list)
    skipped_existing: list[int] = field(default_factory=list)
    missing_latents: list[str] = field(default_factory=list)


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
    codec: str = DEFAULT_CODEC,
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
        wanted = [camera_key(c) for c in cameras]
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
        json_path = annotation_path(output_dir, split, episode_index)
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
            relative = video_relpath(split, episode_index, camera_short_name(key))
            write_video(
                output_dir / relative, _episode_frames(dataset, episode_index, key), meta.fps, codec=codec
            )
            annotation["videos"].append({"video_path": relative})
        latents = []
        for k, key in enumerate(video_keys):
            source = latent_sidecar_path(dataset.root, key, episode_index)
            if not source.is_file():
                report.missing_latents.append(str(source))
                continue
            relative = latent_relpath(split, episode_index, k)
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
        write_annotation(json_path, annotation)
        report.written.append(episode_index)
    if report.missing_latents:
        logger.info(
            "%d latent file(s) not found (annotations written without latent_videos)",
            len(report.missing_latents),
        )
    return report
