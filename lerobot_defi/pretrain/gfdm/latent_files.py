"""Latent files of GFDM clips: reading a clip from one, writing one atomically, the folder of a dataset in the cache.

A latent file holds one whole episode of one camera: float32 ``(T, 4, S/8, S/8)`` = VAE latents (posterior sample
by default, as VPP) times the VAE scaling factor (0.18215) of frames resized to ``S = image_size`` and mapped to
[-1, 1]. ``read_latent_frames`` reads a clip's ``(F, 4, S/8, S/8)`` from one (memory-mapped). The latent cache
(``<latent_cache_dir>/<dataset cache name>/<cam>/episode_<index:06d>.pt``) is filled by ``latent_cache``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lerobot_defi.pretrain.gfdm.clips import GFDMDatasetConfig


def read_latent_frames(path: Path, indices: np.ndarray, expected_length: int | None = None) -> Tensor:
    """Frames ``indices`` of a latent file -> float32 ``(len(indices), C, h, w)`` (memory-mapped read)."""
    if not path.is_file():
        raise FileNotFoundError(f"latent file {path} does not exist")
    latents = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(latents, Tensor) or latents.ndim != 4:
        raise ValueError(
            f"latent file {path}: expected a tensor (T, C, h, w) of VAE latents, got "
            f"{type(latents).__name__} {tuple(getattr(latents, 'shape', ()))}"
        )
    needed = int(indices.max()) + 1
    if (expected_length is not None and latents.shape[0] < expected_length) or latents.shape[0] < needed:
        raise ValueError(
            f"latent file {path} holds {latents.shape[0]} frames but the episode has "
            f"{expected_length if expected_length is not None else needed} (clip frames {indices.tolist()}); "
            "the latents are shorter than the clip: re-encode the cache or check the episode"
        )
    return latents[torch.from_numpy(indices)].float()


def save_latents_atomically(latents: Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(latents.contiguous().clone(), tmp)
    os.replace(tmp, path)


def dataset_cache_name(config: GFDMDatasetConfig) -> str:
    """Folder name of a dataset inside the latent cache (its repo id, made path-safe)."""
    return config.repo_id.replace("/", "__")
