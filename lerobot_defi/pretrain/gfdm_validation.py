"""Validation of a GFDM run (docs/method.md §2.7): the loss on held-out clips with fixed draws (comparable from
one validation to the next), overall and per dataset, reduced over processes; and sample videos a person looks
at: ``samples/step_<step>.{mp4,gif}`` (ground truth above prediction) with the instructions in ``.txt``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from lerobot_defi.models.gfdm_video import decode_latent_video, sample_gfdm_video
from lerobot_defi.pretrain.gfdm_clip_dataset import collate_clips
from lerobot_defi.pretrain.gfdm_samples import write_comparison_videos
from lerobot_defi.pretrain.mixture import MixtureDataset

if TYPE_CHECKING:
    from lerobot_defi.pretrain.gfdm_trainer import GFDMTrainer


@torch.no_grad()
def validation_losses(trainer: GFDMTrainer, loader: DataLoader) -> dict[str, float]:
    """``val_loss`` over all processes and ``val_loss/<repo_id>`` per dataset: the trainer's per-video losses
    without text dropout, every random draw from a generator seeded by ``(val_seed, batch, process)``."""
    acc, cfg = trainer.accelerator, trainer.cfg
    names = [d.config.repo_id for _, d in trainer.val_sets]
    sums = torch.zeros(len(names) + 1, device=acc.device, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for i, batch in enumerate(loader):
        generator = torch.Generator(acc.device).manual_seed(
            cfg.val_seed * 7919 + i * 104729 + acc.process_index
        )
        per_video = trainer.losses(batch, text_dropout=0.0, generator=generator).double()
        sources = batch["source_index"].to(acc.device)
        sums.index_add_(0, sources, per_video)
        counts.index_add_(0, sources, torch.ones_like(per_video))
        sums[-1] += per_video.sum()
        counts[-1] += len(per_video)
    sums, counts = acc.reduce(sums, "sum"), acc.reduce(counts, "sum")
    result = {"val_loss": (sums[-1] / counts[-1].clamp(min=1)).item()}
    for k, name in enumerate(names):
        if counts[k] > 0:
            result[f"val_loss/{name}"] = (sums[k] / counts[k]).item()
    return result


@torch.no_grad()
def write_sample_videos(trainer: GFDMTrainer, step: int) -> list[Path]:
    """Predict ``sample_videos.num_videos`` validation clips from their first frame and instruction; write
    ``samples/step_<step>.{mp4,gif}`` (ground truth above prediction). Main process only."""
    cfg, acc = trainer.cfg, trainer.accelerator
    sv = cfg.sample_videos
    dataset = MixtureDataset([d for _, d in trainer.val_sets])
    order = np.random.default_rng(sv.seed).permutation(len(dataset))[: sv.num_videos]
    keys = [(int(i), sv.seed + int(i)) for i in order]
    loader = DataLoader(
        dataset, len(keys), sampler=keys, num_workers=cfg.num_workers, collate_fn=collate_clips
    )
    batch = next(iter(loader))
    generator = torch.Generator(acc.device).manual_seed(sv.seed)
    clean = trainer.clean_latents(batch, generator)
    unet = acc.unwrap_model(trainer.unet)
    scheduler = copy.deepcopy(trainer.parts.scheduler)
    with acc.autocast():
        predicted = sample_gfdm_video(
            unet,
            scheduler,
            clean[:, 0] / trainer.scaling_factor,
            trainer.text_context(batch["task"]),
            num_frames=cfg.num_frames,
            num_steps=sv.num_steps,
            guidance_min=sv.guidance_min,
            guidance_max=sv.guidance_max,
            added_time_ids=cfg.objective.added_time_ids,
            uncond_zero_image=sv.uncond_zero_image,
            generator=generator,
        )
    truth = decode_latent_video(trainer.vae, clean, sv.decode_chunk_size)
    prediction = decode_latent_video(trainer.vae, predicted, sv.decode_chunk_size)
    stem = trainer.output_dir / "samples" / f"step_{step:09d}"
    paths = write_comparison_videos(stem, truth, prediction, sv.fps, sv.formats)
    stem.with_suffix(".txt").write_text("\n".join(batch["task"]) + "\n")
    return paths
