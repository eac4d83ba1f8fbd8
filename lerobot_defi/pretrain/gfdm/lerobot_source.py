"""GFDM clips from a LeRobotDataset (``GFDMDatasetConfig.format="lerobot"``): episodes, cameras, per-frame
instructions, and frame reading.

Cameras are video or image features ``observation.images.<cam>``; a clip's frames are decoded as float32
``(F, 3, H, W)`` in [0, 1] and resized to uint8 ``(F, 3, S, S)`` (``resize_frames_uint8``) — or, when latents
exist, read from a latent folder ``<latent_dir>/<cam>/episode_<index:06d>.pt`` (``vpp_format.latent_file``: the
layout of the trainer's latent cache and of the ``vpp_latents/`` sidecar that the VPP converter writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lerobot_defi.conversions.vpp_format import camera_key, latent_file
from lerobot_defi.pretrain.gfdm.clips import GFDMDatasetConfig
from lerobot_defi.pretrain.shared.sources import episode_tasks, load_lerobot_dataset, resolved_video_backend


class LeRobotClipSource:
    """Episodes, cameras, tasks and frame reading of one LeRobotDataset (a train or validation selection)."""

    def __init__(self, config: GFDMDatasetConfig, episodes: list[int] | None):
        self.config = config
        self.dataset = load_lerobot_dataset(config, episodes)
        self.video_backend = resolved_video_backend(config)
        meta = self.dataset.meta
        self.task_names = episode_tasks(self.dataset, config.repo_id)
        self.camera_keys = self._resolve_cameras(meta.camera_keys)
        self.episode_indices = list(episodes) if episodes is not None else list(range(meta.total_episodes))
        self.lengths = [int(meta.episodes[e]["length"]) for e in self.episode_indices]
        self.from_index = [int(meta.episodes[e]["dataset_from_index"]) for e in self.episode_indices]
        columns = self.dataset.hf_dataset.data
        index = columns.column("index").to_numpy()
        self.task_by_index = np.full(meta.total_frames, -1, dtype=np.int64)
        self.task_by_index[index] = columns.column("task_index").to_numpy()
        self.row_by_index = np.full(meta.total_frames, -1, dtype=np.int64)
        self.row_by_index[index] = np.arange(len(index))

    def _resolve_cameras(self, available: list[str]) -> list[str]:
        if not available:
            raise ValueError(f"dataset {self.config.repo_id}: no camera feature (observation.images.*)")
        wanted = self.config.cameras or [available[0]]
        keys = [camera_key(c) for c in wanted]
        unknown = [c for c, k in zip(wanted, keys) if k not in available]
        if unknown:
            raise ValueError(
                f"dataset {self.config.repo_id}: camera(s) {unknown} not found; cameras are {available}"
            )
        return keys

    def task(self, episode: int, frame: int) -> str:
        task_index = self.task_by_index[self.from_index[episode] + frame]
        if task_index < 0:
            raise ValueError(
                f"dataset {self.config.repo_id}: frame {frame} of episode {self.episode_indices[episode]} has no task"
            )
        return self.task_names[task_index]

    def read_frames(self, episode: int, camera: str, frames: np.ndarray) -> Tensor:
        """Frames of one episode and camera -> float32 ``(len(frames), 3, H, W)`` in [0, 1]."""
        unique, inverse = np.unique(frames, return_inverse=True)
        episode_index = self.episode_indices[episode]
        meta = self.dataset.meta
        if camera in meta.video_keys:
            from lerobot.datasets.video_utils import decode_video_frames

            info = meta.episodes[episode_index]
            start = info[f"videos/{camera}/from_timestamp"]
            path = self.dataset.root / meta.get_video_file_path(episode_index, camera)
            timestamps = [start + int(f) / meta.fps for f in unique]
            try:
                decoded = decode_video_frames(path, timestamps, self.dataset.tolerance_s, self.video_backend)
            except Exception as err:
                raise RuntimeError(
                    f"dataset {self.config.repo_id}: could not decode frames {unique.tolist()} of episode "
                    f"{episode_index} from {path}: {err}"
                ) from err
        else:
            rows = self.row_by_index[self.from_index[episode] + unique].tolist()
            decoded = torch.stack(self.dataset.hf_dataset[rows][camera])
        return decoded[torch.from_numpy(inverse)].float()

    def latent_path(self, latent_dir: str | Path, episode: int, camera: str) -> Path:
        return latent_file(latent_dir, camera, self.episode_indices[episode])


def resize_frames_uint8(frames: Tensor, size: int) -> Tensor:
    """``(N, 3, H, W)`` float in [0, 1] -> ``(N, 3, size, size)`` uint8 (bilinear, antialiased)."""
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(
            frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)


def frames_to_model_range(frames: Tensor) -> Tensor:
    """uint8 frames -> float32 in [-1, 1] (same shape)."""
    return frames.float() / 127.5 - 1.0
