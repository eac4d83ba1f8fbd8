"""Frame pairs ``(t, t + gap)`` with their instruction from LeRobotDatasets, for GIDM pretraining
(docs/method.md §3.3).

Each source dataset is read with LeRobot's own ``delta_timestamps`` mechanism on one camera, so a sample is
``frames (2, 3, S, S)`` float in [0, 1] (frame t, frame t + gap), resized to ``S x S`` and augmented with one
set of random parameters shared by both frames, plus the frame's ``task`` string.

Official behaviour kept as defaults (docs/method.md §3.3, §8.21):

* a random gap (``gap_range``) is drawn **once per dataset per run** (``gap_sampling="per_run"``; the draw is
  seeded, so every process of a run and a resumed run get the same gap); ``"per_sample"`` draws it per pair;
* a target past the end of the episode is clamped to the episode's last frame (``end_of_episode="clamp"``;
  ``"drop"`` keeps only start frames whose target lies inside the episode);
* frames without an instruction are skipped (``missing_task="skip"``; ``"error"`` refuses the dataset,
  ``"keep"`` trains on them with an empty instruction);
* instructions are lower-cased with punctuation stripped (``normalize_instructions``).

Episodes of a single frame can form no pair: they are skipped with a warning, and a dataset left with no
pair at all is an error naming the dataset and what was found.
"""

from __future__ import annotations

import logging
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lerobot_defi.pretrain.shared.sources import DatasetSourceConfig, open_metadata, resolved_video_backend

logger = logging.getLogger(__name__)

OFFICIAL_DEFAULT_GAP = 9  # window of 10 frames: pair (t, t + 9)
GAP_SAMPLING_MODES = ("per_run", "per_sample")
END_OF_EPISODE_MODES = ("clamp", "drop")
MISSING_TASK_MODES = ("skip", "error", "keep")


@dataclass
class FramePairSourceConfig(DatasetSourceConfig):
    """One LeRobotDataset of the GIDM mixture (``repo_id``, ``root``, ``weight``, ``episodes``, ``val_episodes``,
    ``video_backend`` as in every pretraining mixture) plus the GIDM fields:

    ``gap`` (frames between the two frames of a pair) or ``gap_range`` (inclusive ``[min, max]``, drawn as set
    by ``gap_sampling``); neither gives the official default gap of 9. ``camera_key`` defaults to the dataset's
    first camera (the official code uses the primary camera only). The trainer can multiply ``weight`` by the
    dataset's number of pairs (official ``balance_weights``).
    """

    camera_key: str | None = None
    gap: int | None = None
    gap_range: list[int] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.gap is not None and self.gap_range is not None:
            raise ValueError(f"dataset {self.repo_id}: give `gap` or `gap_range`, not both")
        if self.gap is not None and self.gap < 1:
            raise ValueError(f"dataset {self.repo_id}: gap must be >= 1 frame, got {self.gap}")
        if self.gap_range is not None and (
            len(self.gap_range) != 2 or not 1 <= self.gap_range[0] <= self.gap_range[1]
        ):
            raise ValueError(
                f"dataset {self.repo_id}: gap_range must be [min, max] with 1 <= min <= max, got {self.gap_range}"
            )

    @property
    def gap_bounds(self) -> tuple[int, int]:
        """Inclusive ``(min, max)`` gap of this dataset."""
        if self.gap_range is not None:
            return int(self.gap_range[0]), int(self.gap_range[1])
        gap = OFFICIAL_DEFAULT_GAP if self.gap is None else self.gap
        return gap, gap


def draw_run_gap(source: FramePairSourceConfig, seed: int) -> int:
    """The gap used for the whole run in ``per_run`` mode: a deterministic draw from ``(seed, repo_id)``."""
    low, high = source.gap_bounds
    return random.Random(f"{seed}:{source.repo_id}").randint(low, high)


_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_instruction(text: str) -> str:
    """Lower-case, strip punctuation, collapse whitespace (the official OXE language preprocessing)."""
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


class PairAugmentation:
    """Resize both frames to ``image_size`` and, when ``augment``, apply one random resized crop (area
    ``crop_area``, square) and colour jitter (brightness, contrast, saturation, hue in this order) with the
    **same** random parameters to both frames. ``frames (2, 3, H, W)`` in [0, 1] -> ``(2, 3, S, S)``."""

    def __init__(
        self,
        image_size: int,
        augment: bool = True,
        crop_area: float = 0.9,
        brightness: float = 0.2,
        contrast: tuple[float, float] = (0.8, 1.2),
        saturation: tuple[float, float] = (0.8, 1.2),
        hue: float = 0.05,
    ):
        steps: list = [v2.Resize((image_size, image_size), antialias=True)]
        if augment:
            steps += [
                v2.RandomResizedCrop(
                    image_size, scale=(crop_area, crop_area), ratio=(1.0, 1.0), antialias=True
                ),
                v2.ColorJitter(brightness=brightness),
                v2.ColorJitter(contrast=tuple(contrast)),
                v2.ColorJitter(saturation=tuple(saturation)),
                v2.ColorJitter(hue=hue),
            ]
        # v2 transforms draw their parameters once per call: a (2, 3, H, W) input gets one crop/jitter for both.
        self.transform = v2.Compose(steps)

    def __call__(self, frames: Tensor) -> Tensor:
        return self.transform(frames).clamp_(0.0, 1.0)


@dataclass
class PairIndexReport:
    """Which start frames of a dataset make pairs, and what was left out (for logs and errors)."""

    num_frames: int
    num_episodes: int
    short_episodes: list[int]  # episodes with fewer than 2 frames (no pair possible)
    missing_task_frames: int
    clamped_pairs: int  # pairs whose target was clamped to the episode's last frame
    dropped_past_end: int  # start frames dropped because the target lies past the episode (``drop`` mode)


class FramePairDataset(Dataset):
    """Frame pairs of one LeRobotDataset camera.

    ``sample(i, rng)`` (and ``dataset[i]``, seeded by ``i``) -> ``frames (2, 3, S, S)`` in [0, 1], ``task``
    (str), ``gap`` (int), ``episode_index``, ``frame_index`` (of frame t). All randomness of a sample (gap
    in ``per_sample`` mode, augmentation) comes from ``rng``, so a sample depends only on ``(i, seed)`` --
    not on the worker or process that loads it -- and a resumed run sees the same data.
    ``episodes`` overrides ``source.episodes`` (the trainer passes the training or validation split).
    """

    def __init__(
        self,
        source: FramePairSourceConfig,
        *,
        image_size: int,
        augmentation: PairAugmentation | None = None,
        gap_sampling: str = "per_run",
        end_of_episode: str = "clamp",
        missing_task: str = "skip",
        normalize_instructions: bool = True,
        seed: int = 42,
        episodes: list[int] | None = None,
    ):
        for name, value, allowed in (
            ("gap_sampling", gap_sampling, GAP_SAMPLING_MODES),
            ("end_of_episode", end_of_episode, END_OF_EPISODE_MODES),
            ("missing_task", missing_task, MISSING_TASK_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.source = source
        self.gap_sampling = gap_sampling
        self.normalize_instructions = normalize_instructions
        self.augmentation = augmentation or PairAugmentation(image_size, augment=False)
        where = f"dataset {source.repo_id}" + (f" at {source.root}" if source.root else "")

        meta = open_metadata(source)
        cameras = meta.camera_keys
        if not cameras:
            raise ValueError(
                f"{where} has no camera (no feature of dtype video/image): {list(meta.features)}"
            )
        self.camera_key = source.camera_key or cameras[0]
        if self.camera_key not in cameras:
            raise ValueError(f"{where}: camera_key {self.camera_key!r} not found; cameras: {cameras}")
        self.fps = meta.fps

        if gap_sampling == "per_run":
            self.gaps = [draw_run_gap(source, seed)]
        else:
            low, high = source.gap_bounds
            self.gaps = list(range(low, high + 1))
        # One LeRobot window per sample: frame t and every candidate target (a single one in per_run mode).
        self.dataset = LeRobotDataset(
            source.repo_id,
            root=source.root,
            episodes=source.episodes if episodes is None else episodes,
            delta_timestamps={self.camera_key: [k / self.fps for k in (0, *self.gaps)]},
            video_backend=resolved_video_backend(source),
        )
        self.start_indices, self.report = self._index_pairs(where, end_of_episode, missing_task)

    def _index_pairs(
        self, where: str, end_of_episode: str, missing_task: str
    ) -> tuple[np.ndarray, PairIndexReport]:
        meta = self.dataset.meta
        table = self.dataset.hf_dataset.data
        episode = table.column("episode_index").to_numpy()
        absolute = table.column("index").to_numpy()
        task_index = table.column("task_index").to_numpy()
        episodes = meta.episodes
        ids = np.asarray(episodes["episode_index"], dtype=np.int64)
        first = np.zeros(ids.max() + 1, dtype=np.int64)
        end = np.zeros(ids.max() + 1, dtype=np.int64)
        first[ids] = np.asarray(episodes["dataset_from_index"], dtype=np.int64)
        end[ids] = np.asarray(episodes["dataset_to_index"], dtype=np.int64)
        start, length = first[episode], end[episode] - first[episode]
        position = absolute - start

        task_names = list(meta.tasks.index)
        missing_ids = {i for i, name in enumerate(task_names) if not str(name).strip()}
        missing = np.isin(task_index, list(missing_ids)) if missing_ids else np.zeros(len(episode), bool)
        if missing.any() and missing_task == "error":
            bad = sorted({int(e) for e in episode[missing]})
            raise ValueError(
                f"{where}: {int(missing.sum())} frames of episodes {bad[:20]} have an empty `task`; the GIDM "
                "is conditioned on the instruction. Fix the dataset, or set missing_task='skip' (official: "
                "such trajectories are skipped) or 'keep' (train them with an empty instruction)."
            )

        short = length < 2
        max_gap = max(self.gaps)
        past_end = position + max_gap > length - 1
        keep = ~short
        if missing_task == "skip":
            keep &= ~missing
        dropped_past_end = 0
        if end_of_episode == "drop":
            dropped_past_end = int((keep & past_end).sum())
            keep &= ~past_end
        report = PairIndexReport(
            num_frames=len(episode),
            num_episodes=len(set(episode.tolist())),
            short_episodes=sorted({int(e) for e in episode[short]}),
            missing_task_frames=int(missing.sum()),
            clamped_pairs=int((keep & past_end).sum()),
            dropped_past_end=dropped_past_end,
        )
        if not keep.any():
            raise ValueError(
                f"{where} yields no frame pair for the GIDM: {report.num_episodes} episodes, longest "
                f"{int(length.max()) if len(length) else 0} frames, gap {self.gaps}, end_of_episode="
                f"{end_of_episode!r}, {len(report.short_episodes)} episodes with fewer than 2 frames, "
                f"{report.missing_task_frames} frames without task (missing_task={missing_task!r}). "
                "A pair needs two frames of one episode"
                + (
                    " with the target inside the episode (use a smaller gap or end_of_episode='clamp')."
                    if end_of_episode == "drop"
                    else "."
                )
            )
        if report.short_episodes:
            logger.warning(
                "%s: %d episodes have fewer than 2 frames and give no pair (skipped): %s",
                where,
                len(report.short_episodes),
                report.short_episodes[:20],
            )
        if report.missing_task_frames and missing_task != "error":
            logger.warning(
                "%s: %d frames have no task text (%s)",
                where,
                report.missing_task_frames,
                "skipped" if missing_task == "skip" else "kept with an empty instruction",
            )
        if report.clamped_pairs:
            logger.info(
                "%s: %d of %d pairs end at the episode's last frame (target t+gap past the end; official clamp)",
                where,
                report.clamped_pairs,
                int(keep.sum()),
            )
        # LeRobotDataset indices are relative to the (episode-filtered) table.
        return np.flatnonzero(keep), report

    @property
    def run_gap(self) -> int | None:
        """The gap of this run in ``per_run`` mode (None in ``per_sample`` mode)."""
        return self.gaps[0] if self.gap_sampling == "per_run" else None

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, np.random.default_rng(index))

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        item = self.dataset[int(self.start_indices[index])]
        frames = item[self.camera_key]  # (1 + len(gaps), 3, H, W) in [0, 1]
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        choice = int(rng.integers(len(self.gaps)))
        pair = torch.stack([frames[0], frames[1 + choice]])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63 - 1)))
            pair = self.augmentation(pair)
        task = item["task"]
        return {
            "frames": pair,
            "task": normalize_instruction(task) if self.normalize_instructions else task,
            "gap": self.gaps[choice],
            "episode_index": int(item["episode_index"]),
            "frame_index": int(item["frame_index"]),
        }


def split_episodes(source: DatasetSourceConfig, total_episodes: int) -> tuple[list[int] | None, list[int]]:
    """``(train, val)`` episode lists: ``episodes`` (None = all) minus ``val_episodes``."""
    val = sorted(set(source.val_episodes or []))
    bad = [e for e in val + list(source.episodes or []) if not 0 <= e < total_episodes]
    if bad:
        raise ValueError(f"dataset {source.repo_id}: episodes {bad} out of range (it has {total_episodes})")
    if not val:
        return source.episodes, []
    train = [e for e in (source.episodes or range(total_episodes)) if e not in set(val)]
    if not train:
        raise ValueError(f"dataset {source.repo_id}: no training episode left after val_episodes={val}")
    return train, val


def describe_sources(datasets: list[FramePairDataset]) -> list[dict]:
    """One JSON-able line per dataset: id, root, camera, gap(s), pairs, fps (for logs and the model card)."""
    return [
        {
            "repo_id": d.source.repo_id,
            "root": str(Path(d.source.root)) if d.source.root else None,
            "camera_key": d.camera_key,
            "weight": d.source.weight,
            "gap": d.run_gap if d.run_gap is not None else d.gaps,
            "pairs": len(d),
            "fps": d.fps,
        }
        for d in datasets
    ]
