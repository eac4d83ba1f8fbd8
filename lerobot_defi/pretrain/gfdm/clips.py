"""One dataset of the GFDM mixture (:class:`GFDMDatasetConfig`) and the clips it cuts from an episode
(docs/method.md §2.3).

A clip is ``num_frames`` frame indices of one episode and one camera, with the instruction of its first frame:

* ``clip_mode="stride"`` (official robot sets, e.g. CALVIN): frames ``start + k * frame_stride``, a clip starting
  at every ``clip_start_every``-th frame of every episode; indices past the episode end are clamped to its last
  frame when ``pad_short_clips`` (official) and such clips are dropped otherwise.
* ``clip_mode="even"`` (official internet sets: Bridge, RT-1, Something-Something): one clip per episode,
  ``floor(linspace(0, n - 1, num_frames))``; episodes longer than ``max_episode_frames`` (official 100) skipped.

Episode of ``n`` frames -> clips: a list of int64 ``(num_frames,)`` index arrays, each index in ``[0, n)``.
Where the frames come from: ``lerobot_source`` (``format="lerobot"``) and ``vpp_source``
(``format="vpp"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lerobot_defi.pretrain.shared.sources import DatasetSourceConfig

CLIP_MODES = ("stride", "even")
SOURCE_FORMATS = ("lerobot", "vpp")


@dataclass
class GFDMDatasetConfig(DatasetSourceConfig):
    """One dataset of the GFDM mixture: where it is, how clips are cut, which camera is used."""

    # "lerobot" (a LeRobotDataset; root / repo_id) or "vpp" (a VPP dataset folder given as root).
    format: str = "lerobot"
    # Cameras to draw from ("static" or "observation.images.static"; VPP: camera positions "0", "1").
    # None: the first camera only (official for every set but CALVIN).
    cameras: list[str] | None = None
    # Probability of each camera (official CALVIN: [0.75, 0.25] for static, gripper); None: uniform.
    camera_weights: list[float] | None = None
    clip_mode: str = "stride"
    frame_stride: int = 2
    # Clip starts every this many frames; None: frame_stride (official).
    clip_start_every: int | None = None
    # "even" mode: episodes with more frames are skipped (official 100 for Bridge / RT-1 / Something-Something).
    max_episode_frames: int | None = None
    # Clamp clips running past the episode end to its last frame (official) instead of dropping them.
    pad_short_clips: bool = True
    # A folder of precomputed latents <latent_dir>/<cam>/episode_<index:06d>.pt (e.g. the converter's
    # <dataset root>/vpp_latents); None: the trainer's latent cache (when enabled) or raw frames.
    latent_dir: str | None = None
    # "vpp" format: annotation split to train on and (optionally) to validate on.
    split: str = "train"
    val_split: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.format not in SOURCE_FORMATS:
            raise ValueError(
                f"dataset {self.repo_id}: format must be one of {SOURCE_FORMATS}, got {self.format!r}"
            )
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(
                f"dataset {self.repo_id}: clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}"
            )
        if self.frame_stride < 1 or (self.clip_start_every is not None and self.clip_start_every < 1):
            raise ValueError(f"dataset {self.repo_id}: frame_stride and clip_start_every must be >= 1")
        if self.camera_weights is not None and (
            self.cameras is None
            or len(self.camera_weights) != len(self.cameras)
            or any(not w > 0 for w in self.camera_weights)
        ):
            raise ValueError(
                f"dataset {self.repo_id}: camera_weights {self.camera_weights} needs one positive weight per "
                f"entry of cameras {self.cameras}"
            )
        if self.format == "vpp" and self.root is None:
            raise ValueError(f"dataset {self.repo_id}: format 'vpp' needs root (the VPP dataset folder)")


def strided_clip_indices(start: int, num_frames: int, stride: int, length: int) -> np.ndarray:
    """``start + k * stride`` for ``k < num_frames``, clamped to ``length - 1`` -> ``(num_frames,)`` int64."""
    return np.minimum(start + np.arange(num_frames) * stride, length - 1)


def evenly_spaced_indices(length: int, num_frames: int) -> np.ndarray:
    """``floor(linspace(0, length - 1, num_frames))`` -> ``(num_frames,)`` int64 (official internet sets)."""
    return np.linspace(0, length - 1, num_frames).astype(np.int64)


def episode_clips(config: GFDMDatasetConfig, length: int, num_frames: int) -> list[np.ndarray]:
    """All clips (frame-index arrays) that ``config`` cuts from an episode of ``length`` frames."""
    if config.clip_mode == "even":
        if config.max_episode_frames is not None and length > config.max_episode_frames:
            return []
        if length < num_frames and not config.pad_short_clips:
            return []
        return [evenly_spaced_indices(length, num_frames)]
    span = (num_frames - 1) * config.frame_stride + 1
    every = config.clip_start_every or config.frame_stride
    last_start = length - 1 if config.pad_short_clips else length - span
    return [
        strided_clip_indices(s, num_frames, config.frame_stride, length)
        for s in range(0, last_start + 1, every)
    ]


def no_clip_error(config: GFDMDatasetConfig, lengths: list[int], num_frames: int, what: str) -> ValueError:
    span = (num_frames - 1) * config.frame_stride + 1 if config.clip_mode == "stride" else num_frames
    longest = max(lengths) if lengths else 0
    hint = (
        f"all {len(lengths)} episodes are longer than max_episode_frames={config.max_episode_frames}"
        if config.clip_mode == "even"
        and config.max_episode_frames
        and min(lengths, default=0) > config.max_episode_frames
        else f"a {num_frames}-frame clip ({config.clip_mode} mode) needs {span} frames, the longest of "
        f"{len(lengths)} episodes has {longest}; lower num_frames / frame_stride or set pad_short_clips=true"
    )
    return ValueError(f"dataset {config.repo_id} ({what}): no clip can be cut: {hint}")
