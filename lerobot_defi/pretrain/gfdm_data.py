"""GFDM training clips: which frames form a clip, where they come from, and the optional latent cache
(docs/method.md §2.3).

A clip is ``num_frames`` frame indices of one episode and one camera, with the instruction of its first frame:

* ``clip_mode="stride"`` (official robot sets, e.g. CALVIN): frames ``start + k * frame_stride``, a clip starting
  at every ``clip_start_every``-th frame of every episode; indices past the episode end are clamped to its last
  frame when ``pad_short_clips`` (official) and such clips are dropped otherwise.
* ``clip_mode="even"`` (official internet sets: Bridge, RT-1, Something-Something): one clip per episode,
  ``floor(linspace(0, n - 1, num_frames))``; episodes longer than ``max_episode_frames`` (official 100) skipped.

Sources (``GFDMDatasetConfig.format``):

* ``"lerobot"``: a LeRobotDataset (video or image camera features ``observation.images.<cam>``, ``task`` text);
  frames are decoded, resized to ``image_size`` squared and returned as uint8 — or, when latents exist, read
  from a latent folder ``<latent_dir>/<cam>/episode_<index:06d>.pt`` (the layout of this module's cache and of
  the ``vpp_latents/`` sidecar that the VPP converter writes).
* ``"vpp"``: a VPP dataset folder read directly (``annotation/<split>/<id>.json`` + ``latent_videos[_svd]/...pt``):
  the released latents train without conversion; cameras are the annotation's camera positions ``"0"``, ``"1"``.

Latent files hold one whole episode of one camera: float32 ``(T, 4, H/8, W/8)`` = VAE latents (posterior sample by
default, as VPP) times the VAE scaling factor (0.18215), of frames resized to ``image_size`` and mapped to [-1, 1].

Items (``GFDMClipDataset.sample(index, rng)``): ``{"frames": uint8 (F, 3, S, S)}`` or
``{"latents": float32 (F, 4, S/8, S/8)}``, plus ``"task"`` (str) and ``"camera"`` (str).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from lerobot_defi.pretrain.sources import DatasetSourceConfig, episode_tasks, load_lerobot_dataset

logger = logging.getLogger(__name__)

CAMERA_PREFIX = "observation.images."
CLIP_MODES = ("stride", "even")
SOURCE_FORMATS = ("lerobot", "vpp")
VPP_LATENT_FOLDERS = ("latent_videos", "latent_videos_svd")


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


# ----------------------------------------------------------------------------------------------------------------
# clip indices
# ----------------------------------------------------------------------------------------------------------------
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


def _no_clip_error(config: GFDMDatasetConfig, lengths: list[int], num_frames: int, what: str) -> ValueError:
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


# ----------------------------------------------------------------------------------------------------------------
# latent files
# ----------------------------------------------------------------------------------------------------------------
def camera_short_name(key: str) -> str:
    """``observation.images.static -> static`` (the folder name of its latent files)."""
    return key.removeprefix(CAMERA_PREFIX)


def latent_file(latent_dir: str | Path, camera: str, episode_index: int) -> Path:
    """``<latent_dir>/<camera short name>/episode_<index:06d>.pt``."""
    return Path(latent_dir) / camera_short_name(camera) / f"episode_{episode_index:06d}.pt"


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


# ----------------------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Clip:
    episode: int  # position in the source's episode list
    frames: np.ndarray  # (F,) frame indices within the episode


class LeRobotClipSource:
    """Episodes, cameras, tasks and frame reading of one LeRobotDataset (a train or validation selection)."""

    def __init__(self, config: GFDMDatasetConfig, episodes: list[int] | None):
        self.config = config
        self.dataset = load_lerobot_dataset(config, episodes)
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
        keys = [c if c.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + c for c in wanted]
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
                decoded = decode_video_frames(
                    path, timestamps, self.dataset.tolerance_s, self.config.video_backend
                )
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


class VPPLatentSource:
    """A VPP dataset folder read directly: one episode per annotation JSON, latents from its ``.pt`` files."""

    def __init__(self, config: GFDMDatasetConfig, split: str):
        self.config = config
        root = Path(config.root)
        folder = root / "annotation" / split
        files = sorted(
            folder.glob("*.json"),
            key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem),
        )
        if not files:
            raise FileNotFoundError(
                f"dataset {config.repo_id}: no annotation files {folder}/*.json (VPP layout: "
                "<root>/annotation/<split>/<id>.json with latent_videos/<split>/<id>/<cam>.pt)"
            )
        cameras = config.cameras or ["0"]
        if not all(c.isdigit() for c in cameras):
            raise ValueError(
                f"dataset {config.repo_id}: VPP cameras are annotation positions like '0', '1'; got {cameras}"
            )
        self.camera_keys = cameras
        self.texts, self.lengths, self.latent_paths, missing = [], [], [], []
        for path in files:
            data = json.loads(path.read_text())
            texts = data.get("texts")
            if not isinstance(texts, list) or not texts or not str(texts[0]).strip():
                raise ValueError(
                    f"{path}: field 'texts' must be a non-empty list of instructions (texts[0] is used)"
                )
            if isinstance(data.get("state"), list):
                length = len(data["state"])
            elif isinstance(data.get("video_length"), int):
                length = data["video_length"]
            else:
                raise ValueError(f"{path}: missing 'state' (per-frame list) or 'video_length' (int)")
            entries = data.get("latent_videos") or []
            latents = {}
            for camera in cameras:
                k = int(camera)
                if (
                    k >= len(entries)
                    or not isinstance(entries[k], dict)
                    or "latent_video_path" not in entries[k]
                ):
                    raise ValueError(f"{path}: no latent_videos[{k}].latent_video_path for camera {camera}")
                resolved = _resolve_vpp_latent(root, entries[k]["latent_video_path"])
                if resolved is None:
                    missing.append(str(root / entries[k]["latent_video_path"]))
                latents[camera] = resolved
            self.texts.append(str(texts[0]).strip())
            self.lengths.append(length)
            self.latent_paths.append(latents)
        if missing:
            raise FileNotFoundError(
                f"dataset {config.repo_id}: {len(missing)} latent file(s) missing (also looked under "
                f"{'/'.join(VPP_LATENT_FOLDERS)}), e.g. {missing[:3]}"
            )

    def task(self, episode: int, frame: int) -> str:
        return self.texts[episode]

    def latent_path(self, latent_dir, episode: int, camera: str) -> Path:
        return self.latent_paths[episode][camera]


def _resolve_vpp_latent(root: Path, relative: str) -> Path | None:
    """The latent file, also under the other folder name (latent_videos <-> latent_videos_svd), as VPP does."""
    path = root / relative
    if path.is_file():
        return path
    parts = Path(relative).parts
    if parts and parts[0] in VPP_LATENT_FOLDERS:
        other = root / VPP_LATENT_FOLDERS[1 - VPP_LATENT_FOLDERS.index(parts[0])] / Path(*parts[1:])
        if other.is_file():
            return other
    return None


# ----------------------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------------------
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
            raise _no_clip_error(self.config, source.lengths, num_frames, what)
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


def dataset_cache_name(config: GFDMDatasetConfig) -> str:
    """Folder name of a dataset inside the latent cache (its repo id, made path-safe)."""
    return config.repo_id.replace("/", "__")


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


# ----------------------------------------------------------------------------------------------------------------
# the latent cache
# ----------------------------------------------------------------------------------------------------------------
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


def collate_clips(items: list[dict]) -> dict:
    """Batch of clip items: tensors stacked by ``default_collate``; ``task`` and ``camera`` kept as lists."""
    batch = default_collate(
        [{k: v for k, v in item.items() if k not in ("task", "camera")} for item in items]
    )
    batch["task"] = [item["task"] for item in items]
    batch["camera"] = [item["camera"] for item in items]
    return batch
