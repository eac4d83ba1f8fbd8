"""Validation of a GFDM run (docs/method.md §2.7): the loss on held-out clips with fixed draws (comparable from
one validation to the next), overall and per dataset, reduced over processes; and sample videos a person looks
at: ``samples/step_<step>.{mp4,gif}`` (ground truth above prediction) with the instructions in ``.txt``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lerobot_defi.models.gfdm_video import decode_latent_video, sample_gfdm_video
from lerobot_defi.pretrain.gfdm.clip_dataset import GFDMClipDataset, collate_clips
from lerobot_defi.pretrain.gfdm.config import TrainGFDMConfig
from lerobot_defi.pretrain.gfdm.objective import GFDMObjective
from lerobot_defi.pretrain.gfdm.sample_videos import write_comparison_videos
from lerobot_defi.pretrain.shared.mixture import MixtureDataset


@torch.no_grad()
def validation_losses(
    objective: GFDMObjective, loader: DataLoader, dataset_names: list[str], seed: int
) -> dict[str, float]:
    """``val_loss`` over all processes and ``val_loss/<repo_id>`` per dataset (``dataset_names``, in the order of
    the batches' ``source_index``): per-video losses without text dropout, every random draw from a generator
    seeded by ``(seed, batch, process)``."""
    acc = objective.accelerator
    sums = torch.zeros(len(dataset_names) + 1, device=acc.device, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for i, batch in enumerate(loader):
        generator = torch.Generator(acc.device).manual_seed(seed * 7919 + i * 104729 + acc.process_index)
        per_video = objective.losses(batch, text_dropout=0.0, generator=generator).double()
        sources = batch["source_index"].to(acc.device)
        sums.index_add_(0, sources, per_video)
        counts.index_add_(0, sources, torch.ones_like(per_video))
        sums[-1] += per_video.sum()
        counts[-1] += len(per_video)
    sums, counts = acc.reduce(sums, "sum"), acc.reduce(counts, "sum")
    result = {"val_loss": (sums[-1] / counts[-1].clamp(min=1)).item()}
    for k, name in enumerate(dataset_names):
        if counts[k] > 0:
            result[f"val_loss/{name}"] = (sums[k] / counts[k]).item()
    return result


@torch.no_grad()
def write_sample_videos(
    objective: GFDMObjective,
    datasets: list[GFDMClipDataset],
    scheduler,
    cfg: TrainGFDMConfig,
    stem: Path,
) -> list[Path]:
    """Predict ``cfg.sample_videos.num_videos`` clips of ``datasets`` from their first frame and instruction with a
    copy of ``scheduler``; write ``<stem>.{mp4,gif}`` (ground truth above prediction) and the instructions in
    ``<stem>.txt``. Main process only."""
    acc, sv = objective.accelerator, cfg.sample_videos
    dataset = MixtureDataset(datasets)
    order = np.random.default_rng(sv.seed).permutation(len(dataset))[: sv.num_videos]
    keys = [(int(i), sv.seed + int(i)) for i in order]
    loader = DataLoader(
        dataset, len(keys), sampler=keys, num_workers=cfg.num_workers, collate_fn=collate_clips
    )
    batch = next(iter(loader))
    generator = torch.Generator(acc.device).manual_seed(sv.seed)
    clean = objective.clean_latents(batch, generator)
    unet = acc.unwrap_model(objective.unet)
    with acc.autocast():
        predicted = sample_gfdm_video(
            unet,
            copy.deepcopy(scheduler),
            clean[:, 0] / objective.scaling_factor,
            objective.text_context(batch["task"]),
            num_frames=cfg.num_frames,
            num_steps=sv.num_steps,
            guidance_min=sv.guidance_min,
            guidance_max=sv.guidance_max,
            added_time_ids=cfg.objective.added_time_ids,
            uncond_zero_image=sv.uncond_zero_image,
            generator=generator,
        )
    truth = decode_latent_video(objective.vae, clean, sv.decode_chunk_size)
    prediction = decode_latent_video(objective.vae, predicted, sv.decode_chunk_size)
    paths = write_comparison_videos(stem, truth, prediction, sv.fps, sv.formats)
    stem.with_suffix(".txt").write_text("\n".join(batch["task"]) + "\n")
    return paths
