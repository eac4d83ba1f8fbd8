"""Sample videos of the GFDM for people to look at: ground truth above prediction, samples side by side,
written as mp4 (H.264, through the package's one video writer ``lerobot_defi.video_writer``) and/or GIF
(docs/method.md §2.7)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lerobot_defi.video_writer import write_video

VIDEO_FORMATS = ("mp4", "gif")


def comparison_grid(ground_truth: Tensor, prediction: Tensor, gap: int = 2) -> np.ndarray:
    """``(B, F, 3, H, W)`` videos in [-1, 1] -> uint8 frames ``(F, 2H + gap, B(W + gap) - gap, 3)``:
    each column is one sample, ground truth on top, prediction below (white gaps)."""
    if ground_truth.shape != prediction.shape:
        raise ValueError(
            f"ground truth {tuple(ground_truth.shape)} and prediction {tuple(prediction.shape)} differ"
        )
    b, f, _, h, w = ground_truth.shape
    pair = torch.full((b, f, 3, 2 * h + gap, w), 1.0)
    pair[..., :h, :] = ground_truth.float().cpu()
    pair[..., h + gap :, :] = prediction.float().cpu()
    columns = [torch.cat([p, torch.ones(f, 3, 2 * h + gap, gap)], dim=-1) for p in pair]
    grid = torch.cat(columns, dim=-1)[..., : b * (w + gap) - gap]
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_gif(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """``(T, H, W, 3)`` uint8 -> looping GIF; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.gif")
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    os.replace(tmp, path)
    return path


def write_comparison_videos(
    stem: str | Path, ground_truth: Tensor, prediction: Tensor, fps: int, formats=VIDEO_FORMATS
) -> list[Path]:
    """Write ``<stem>.mp4`` / ``<stem>.gif`` comparison grids; returns the written paths."""
    unknown = [f for f in formats if f not in VIDEO_FORMATS]
    if unknown:
        raise ValueError(f"unknown video format(s) {unknown}; choose from {VIDEO_FORMATS}")
    grid = comparison_grid(ground_truth, prediction)
    writers = {"mp4": write_video, "gif": write_gif}
    return [writers[f](Path(f"{stem}.{f}"), grid, fps) for f in formats]
