"""The GFDM clip dataset of one mixture member, and building the training / validation sets of a run.

Items (``GFDMClipDataset.sample(index, rng)``): ``{"frames": uint8 (F, 3, S, S)}`` (decoded from a LeRobotDataset)
or ``{"latents": float32 (F, 4, S/8, S/8)}`` (latent files: a VPP folder, a latent folder, the latent cache), plus
``"task"`` (str) and ``"camera"`` (str). ``collate_clips`` stacks them to ``(B, F, ...)`` with lists of strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, default_collate

from lerobot_defi.pretrain.gfdm.clips import GFDMDatasetConfig, episode_clips, no_clip_error
from lerobot_defi.pretrain.gfdm.latent_files import dataset_cache_name, read_latent_frames
from lerobot_defi.pretrain.gfdm.lerobot_source import LeRobotClipSource, resize_frames_uint8
from lerobot_defi.pretrain.gfdm.vpp_source import VPPLatentSource
from lerobot_defi.pretrain.shared.sources import load_lerobot_dataset


@dataclass
class _Clip:
    episode: int  # position in the source's episode list
    frames: np.ndarray  # (F,) frame indices within the episode


class GFDMClipDataset(Dataset):
    """All clips of one source. ``sample(index, rng)`` picks the camera with ``rng`` (``__getitem__`` seeds it
    with the index); returns frames (uint8, resized to ``image_size``) or latents when ``latent_dir`` is set
    (checked to be ``image_size / latent_downsample`` on a side; SVD's VAE: 8)."""

    def __init__(
        self,
        source: LeRobotClipSource | VPPLatentSource,
        num_frames: int,
        image_size: int,
        latent_dir: str | Path | None = None,
        what: str = "train",
        latent_downsample: int = 8,
    ):
        self.source = source
        self.latent_downsample = latent_downsample
        self.config = source.config
        self.num_frames = num_frames
        self.image_size = image_size
        self.latent_dir = latent_dir
        self.use_latents = latent_dir is not None or isinstance(source, VPPLatentSource)
        self.clips = [
            _Clip(e, frames)
            for e, length in enumerate(source.lengths)
            for frames in episode_clips(self.config, length, num_frames)
        ]
        if not self.clips:
            raise no_clip_error(self.config, source.lengths, num_frames, what)
        weights = self.config.camera_weights or [1.0] * len(source.camera_keys)
        self.camera_probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, np.random.default_rng(index))

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        clip = self.clips[index]
        camera = self.source.camera_keys[
            rng.choice(len(self.source.camera_keys), p=self.camera_probabilities)
        ]
        item = {"task": self.source.task(clip.episode, int(clip.frames[0])), "camera": camera}
        if self.use_latents:
            path = self.source.latent_path(self.latent_dir, clip.episode, camera)
            latents = read_latent_frames(path, clip.frames, self.source.lengths[clip.episode])
            side = self.image_size // self.latent_downsample
            if latents.shape[-2:] != (side, side):
                raise ValueError(
                    f"latent file {path} holds {tuple(latents.shape[-2:])} latents but image_size "
                    f"{self.image_size} needs ({side}, {side}); set image_size to the size the latents were "
                    "encoded at (VPP: 256)"
                )
            item["latents"] = latents
        else:
            frames = self.source.read_frames(clip.episode, camera, clip.frames)
            item["frames"] = resize_frames_uint8(frames, self.image_size)
        return item


def _train_val_episodes(config: GFDMDatasetConfig, total: int) -> tuple[list[int] | None, list[int] | None]:
    val = sorted(config.val_episodes) if config.val_episodes else None
    for name, selection in (("episodes", config.episodes), ("val_episodes", val)):
        bad = [e for e in selection or [] if not 0 <= e < total]
        if bad:
            raise ValueError(
                f"dataset {config.repo_id}: {name} {bad} outside the {total} episodes of the dataset"
            )
    if config.episodes is not None:
        train = sorted(config.episodes)
    elif val:
        train = [e for e in range(total) if e not in set(val)]
    else:
        train = None
    if train is not None and not train:
        raise ValueError(f"dataset {config.repo_id}: no training episode left after removing val_episodes")
    return train, val


def build_clip_datasets(
    configs: list[GFDMDatasetConfig],
    num_frames: int,
    image_size: int,
    latent_cache_dir: str | Path | None,
    latent_downsample: int = 8,
) -> tuple[list[GFDMClipDataset], list[GFDMClipDataset | None]]:
    """Training and validation clip datasets (validation None where a dataset has no validation part).

    A LeRobot source reads latents from its ``latent_dir``, else from ``<latent_cache_dir>/<name>`` when the
    cache is enabled, else decodes frames. Latent and frame sources cannot be mixed in one run.
    """
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    train_sets, val_sets = [], []
    for config in configs:
        if config.format == "vpp":
            train_sets.append(
                GFDMClipDataset(
                    VPPLatentSource(config, config.split),
                    num_frames,
                    image_size,
                    latent_downsample=latent_downsample,
                )
            )
            val_sets.append(
                GFDMClipDataset(
                    VPPLatentSource(config, config.val_split),
                    num_frames,
                    image_size,
                    what="validation",
                    latent_downsample=latent_downsample,
                )
                if config.val_split
                else None
            )
            continue
        total = (
            LeRobotDatasetMetadata(config.repo_id, root=config.root).total_episodes if config.root else None
        )
        if total is None:
            total = load_lerobot_dataset(config).meta.total_episodes
        train, val = _train_val_episodes(config, total)
        latent_dir = config.latent_dir or (
            Path(latent_cache_dir) / dataset_cache_name(config) if latent_cache_dir is not None else None
        )
        train_sets.append(
            GFDMClipDataset(
                LeRobotClipSource(config, train),
                num_frames,
                image_size,
                latent_dir,
                "train",
                latent_downsample,
            )
        )
        val_sets.append(
            GFDMClipDataset(
                LeRobotClipSource(config, val),
                num_frames,
                image_size,
                latent_dir,
                "validation",
                latent_downsample,
            )
            if val
            else None
        )
    kinds = {d.use_latents for d in train_sets}
    if len(kinds) > 1:
        latent_names = [d.config.repo_id for d in train_sets if d.use_latents]
        raise ValueError(
            f"datasets {latent_names} provide latents but the others would be decoded from video; enable the "
            "latent cache (--latent_cache.enabled=true) so that every dataset trains from latents"
        )
    return train_sets, val_sets


def collate_clips(items: list[dict]) -> dict:
    """Batch of clip items: tensors stacked by ``default_collate``; ``task`` and ``camera`` kept as lists."""
    batch = default_collate(
        [{k: v for k, v in item.items() if k not in ("task", "camera")} for item in items]
    )
    batch["task"] = [item["task"] for item in items]
    batch["camera"] = [item["camera"] for item in items]
    return batch
