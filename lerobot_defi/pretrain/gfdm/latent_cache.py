"""The latent cache of a GFDM run: ``<latent_cache_dir>/<dataset cache name>/<cam>/episode_<index:06d>.pt``, one
latent file (``latent_files``) per episode and camera of the LeRobot sources, filled by ``encode_missing_latents``
once, before training, with atomically written files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lerobot_defi.models.gfdm_video import encode_video_latents
from lerobot_defi.pretrain.gfdm.clip_dataset import GFDMClipDataset
from lerobot_defi.pretrain.gfdm.latent_files import save_latents_atomically
from lerobot_defi.pretrain.gfdm.lerobot_source import frames_to_model_range, resize_frames_uint8
from lerobot_defi.pretrain.gfdm.vpp_source import VPPLatentSource


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
