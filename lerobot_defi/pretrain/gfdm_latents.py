"""Latent files of GFDM clips and the latent cache.

A latent file holds one whole episode of one camera: float32 ``(T, 4, S/8, S/8)`` = VAE latents (posterior sample
by default, as VPP) times the VAE scaling factor (0.18215) of frames resized to ``S = image_size`` and mapped to
[-1, 1]. ``read_latent_frames`` reads a clip's ``(F, 4, S/8, S/8)`` from one (memory-mapped); the cache
(``<latent_cache_dir>/<dataset cache name>/<cam>/episode_<index:06d>.pt``) is filled by ``encode_missing_latents``
once, before training, with atomically written files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from lerobot_defi.pretrain.gfdm_clips import GFDMDatasetConfig
from lerobot_defi.pretrain.gfdm_lerobot_source import frames_to_model_range, resize_frames_uint8
from lerobot_defi.pretrain.gfdm_vpp_source import VPPLatentSource

if TYPE_CHECKING:
    from lerobot_defi.pretrain.gfdm_clip_dataset import GFDMClipDataset


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


def needed_latent_files(datasets: list[GFDMClipDataset]) -> list[tuple[GFDMClipDataset, int, str, Path]]:
    """``(dataset, episode position, camera, path)`` of every latent file the cached LeRobot sources read, in a
    fixed order (the same on every process, whatever is already on disk)."""
    needed = []
    for dataset in datasets:
        if not dataset.use_latents or isinstance(dataset.source, VPPLatentSource):
            continue
        for episode in sorted({clip.episode for clip in dataset.clips}):
            for camera in dataset.source.camera_keys:
                needed.append(
                    (
                        dataset,
                        episode,
                        camera,
                        dataset.source.latent_path(dataset.latent_dir, episode, camera),
                    )
                )
    return needed


@torch.no_grad()
def encode_missing_latents(
    datasets: list[GFDMClipDataset],
    vae,
    *,
    rank: int = 0,
    world_size: int = 1,
    frames_per_batch: int = 32,
    sample_posterior: bool = True,
    seed: int = 0,
    show_progress: bool = True,
) -> int:
    """Encode every missing episode latent file (this process's share ``rank::world_size``); returns how many
    this process wrote. Files are written atomically, so an interrupted run resumes where it stopped.
    The posterior sample of episode ``e`` uses a generator seeded with ``(seed, e)``."""
    from lerobot_defi.models.gfdm_video import encode_video_latents

    # Shard the full list (not only the missing files): processes look at the disk at different moments.
    todo = [entry for entry in needed_latent_files(datasets)[rank::world_size] if not entry[3].is_file()]
    device = next(vae.parameters()).device
    for dataset, episode, camera, path in tqdm(todo, desc="encoding latents", disable=not show_progress):
        length = dataset.source.lengths[episode]
        generator = torch.Generator(device).manual_seed(
            seed * 1_000_003 + dataset.source.episode_indices[episode]
        )
        chunks = []
        for start in range(0, length, frames_per_batch):
            indices = np.arange(start, min(length, start + frames_per_batch))
            frames = resize_frames_uint8(
                dataset.source.read_frames(episode, camera, indices), dataset.image_size
            )
            chunks.append(
                encode_video_latents(
                    vae,
                    frames_to_model_range(frames.to(device)),
                    sample_posterior=sample_posterior,
                    generator=generator,
                ).cpu()
            )
        save_latents_atomically(torch.cat(chunks), path)
    return len(todo)
