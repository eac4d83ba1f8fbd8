"""Shared pieces of the pretraining entry points (``lerobot-defi-train-gfdm``, ``lerobot-defi-train-gidm``).

API (everything else in this module is private):

Configuration and data
    ``DatasetSourceConfig``       one LeRobotDataset of a mixture: repo id / root, mixture weight, episodes,
                                  validation episodes, video backend (extend it for model-specific fields).
    ``parse_config(cls, argv)``   draccus parsing with LeRobot-style flags; also accepts ``--push-to-hub``
                                  spellings (dashes) and bare boolean flags.
    ``load_lerobot_dataset(src, episodes)`` a local / cached LeRobotDataset with errors that name the source.
    ``episode_tasks(dataset, name)`` per-frame task strings of a dataset, checked to be non-empty text.
    ``MixtureDataset(datasets)``  concatenation whose keys are ``(global_index, sample_seed)``; a member with a
                                  ``sample(local_index, rng)`` method gets a ``numpy.random.Generator`` seeded
                                  by the sampler, so per-sample random choices are reproducible and resumable.
    ``MixtureSampler(sizes, weights, ...)`` draws a dataset by weight for every position of an epoch, then walks
                                  a per-epoch permutation of that dataset; deterministic in ``(seed, epoch)``;
                                  sharded (``rank::world_size``), so build one DataLoader per process and do
                                  NOT pass it through ``accelerator.prepare``; ``resume(samples_seen)`` skips
                                  what this rank already consumed; ``infinite=True`` runs on across epochs
                                  (step-based loops). Give the DataLoader its own ``generator=torch.Generator()``
                                  so that creating it does not draw from the global RNG (exact resume).

Accelerate, checkpoints, logging
    ``make_accelerator(...)``     Accelerator with mixed precision / accumulation / trackers.
    ``seed_process(seed, acc)``   seed every RNG with ``seed + process_index`` (official: seed + rank).
    ``save_checkpoint(acc, output_dir, step, extra)`` model + optimizer + scheduler + scaler + RNG + step,
                                  written to a temporary folder and renamed (atomic), ``checkpoints/last`` link,
                                  optional pruning; every process must call it.
    ``latest_checkpoint(output_dir)`` / ``load_checkpoint(acc, dir)`` resume; returns the saved training state.
    ``MetricsLog(path, acc)``     JSON-lines metrics, written by the main process only.
    ``atomic_directory(final)``   context manager: build a folder under a temporary name, rename on success.

Hub
    ``write_model_card(folder, ...)`` ``huggingface_hub.ModelCard`` README.md with datasets, steps, config.
    ``push_folder_to_hub(folder, repo_id, ...)`` create the repo and ``upload_folder`` (network; main only).

Rank rules: only the main process logs, writes model folders, cards and pushes; every process takes part in
``save_checkpoint`` (accelerate writes one RNG file per process) and in collective calls.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import draccus
import numpy as np
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT_LINK = "last"
TRAINING_STATE_FILE = "training_state.json"


# --------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------
@dataclass
class DatasetSourceConfig:
    """One LeRobotDataset of a training mixture."""

    # Hub id (also the name in logs and the model card); with ``root`` the dataset is read from that folder.
    repo_id: str = ""
    root: str | None = None
    # Relative mixture weight (normalised over all datasets; official GFDM: 0.4 / 0.2 / 0.2 / 0.2).
    weight: float = 1.0
    # Training episodes (None: all but ``val_episodes``) and held-out validation episodes (None: none).
    episodes: list[int] | None = None
    val_episodes: list[int] | None = None
    # "torchcodec" | "pyav" | None (LeRobot's default).
    video_backend: str | None = None

    def __post_init__(self):
        if not self.repo_id:
            raise ValueError("every dataset needs a repo_id (a Hub id, or any name together with root)")
        if not self.weight > 0:
            raise ValueError(f"dataset {self.repo_id}: weight must be > 0, got {self.weight}")


def _normalise_cli_args(argv: Sequence[str]) -> list[str]:
    """``--push-to-hub`` -> ``--push_to_hub=true``; ``--a-b=x`` -> ``--a_b=x`` (values untouched)."""
    out: list[str] = []
    argv = list(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            out.append(arg)
            continue
        name, sep, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        bare = not sep and (i + 1 == len(argv) or argv[i + 1].startswith("--"))
        out.append(f"--{name}=true" if bare else f"--{name}{sep}{value}")
    return out


def parse_config(config_class: type, argv: Sequence[str] | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``config_class`` with draccus.

    ``--config_path=preset.yaml`` loads a YAML/JSON file first (a shipped preset name such as ``gfdm_tiny.yaml``
    also works); later flags override it. Flags may be written with dashes or underscores.
    """
    from lerobot_defi.presets import PRESETS_DIR

    args = _normalise_cli_args(sys.argv[1:] if argv is None else argv)
    config_path = None
    rest = []
    for arg in args:
        if arg.startswith("--config_path="):
            config_path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if config_path is not None and not Path(config_path).is_file():
        shipped = PRESETS_DIR / config_path
        if not shipped.is_file():
            raise FileNotFoundError(
                f"--config_path={config_path}: no such file (nor a preset in {PRESETS_DIR}: "
                f"{sorted(p.name for p in PRESETS_DIR.glob('*.yaml'))})"
            )
        config_path = str(shipped)
    try:
        return draccus.parse(config_class=config_class, config_path=config_path, args=rest)
    except (draccus.utils.ParsingError, draccus.utils.DecodingError) as err:
        # draccus replaces a config's own validation error by "Couldn't instantiate ...": surface the cause.
        cause = err.__cause__ or err.__context__
        while isinstance(cause, (draccus.utils.ParsingError, draccus.utils.DecodingError)):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise cause from None
        raise


# --------------------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------------------
def load_lerobot_dataset(source: DatasetSourceConfig, episodes: list[int] | None = None):
    """Open ``source`` (a local folder via ``root``, else the Hub cache / download) for ``episodes``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if source.root is not None and not (Path(source.root) / "meta" / "info.json").is_file():
        raise FileNotFoundError(
            f"dataset {source.repo_id}: {source.root} is not a LeRobotDataset folder (no meta/info.json); "
            "expected the output of a LeRobot converter (meta/, data/, videos/)"
        )
    try:
        return LeRobotDataset(
            source.repo_id, root=source.root, episodes=episodes, video_backend=source.video_backend
        )
    except Exception as err:  # the Hub/offline errors of LeRobot do not name the dataset
        raise RuntimeError(f"could not open dataset {source.repo_id} (root={source.root}): {err}") from err


def episode_tasks(dataset, name: str) -> list[str]:
    """The instruction of every task index of ``dataset`` (``meta/tasks.parquet``), checked to be non-empty
    text; frames refer to them through their ``task_index`` column."""
    tasks = dataset.meta.tasks
    if tasks is None or len(tasks) == 0:
        raise ValueError(
            f"dataset {name}: no task text (meta/tasks.parquet is empty); the language-conditioned models need "
            "an instruction per frame in the 'task' field"
        )
    names = [str(t) for t in tasks.index]
    empty = [i for i, t in enumerate(names) if not t.strip()]
    if empty:
        raise ValueError(
            f"dataset {name}: task index {empty} has empty instruction text; every frame needs a non-empty "
            "'task' string (the instruction)"
        )
    return names


class MixtureDataset(Dataset):
    """Concatenation of datasets addressed by ``(global_index, sample_seed)`` keys (or plain ints).

    Members with a ``sample(local_index, rng)`` method receive ``numpy.random.default_rng(sample_seed)``;
    others are indexed normally. Dict items get ``"source_index"`` (position of the member dataset).
    """

    def __init__(self, datasets: Sequence[Dataset]):
        if not datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        empty = [i for i, n in enumerate(self.sizes) if n == 0]
        if empty:
            raise ValueError(f"MixtureDataset: member dataset(s) {empty} are empty")
        self.offsets = np.cumsum([0, *self.sizes]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``global index -> (member, local index)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} items")
        member = bisect_right(self.offsets, index) - 1
        return member, index - self.offsets[member]

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        member, local = self.locate(int(index))
        dataset = self.datasets[member]
        if hasattr(dataset, "sample"):
            item = dataset.sample(local, np.random.default_rng(seed))
        else:
            item = dataset[local]
        if isinstance(item, dict):
            item["source_index"] = member
        return item


def index_seed(index: int) -> int:
    """Seed used for plain-int access to a :class:`MixtureDataset` (no sampler)."""
    return int(index)


class MixtureSampler(Sampler):
    """Weighted mixture sampling over member datasets, sharded across processes.

    Each epoch has ``num_samples`` positions (default: the largest member, as the official loader); position
    ``p`` draws a member with probability ``weights[m]`` and takes the next item of that member's epoch
    permutation (a member is exhausted before any item repeats). Yields ``(global_index, sample_seed)``.
    Process ``rank`` gets positions ``rank, rank + world_size, ...`` of the epoch (padded so all ranks get
    the same count). The order depends only on ``(seed, epoch)``. ``infinite``: run on into the next epochs
    (a step-based loop then consumes exactly ``batch_size`` samples per step, which ``resume`` relies on).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = False,
    ):
        if not sizes or any(n <= 0 for n in sizes):
            raise ValueError(f"MixtureSampler: every member needs at least one item, sizes={list(sizes)}")
        weights = [1.0] * len(sizes) if weights is None else list(weights)
        if len(weights) != len(sizes) or any(not w > 0 for w in weights):
            raise ValueError(f"MixtureSampler: need one positive weight per member, got {weights}")
        if not 0 <= rank < world_size:
            raise ValueError(f"MixtureSampler: rank {rank} outside world size {world_size}")
        self.sizes = list(sizes)
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.offsets = np.cumsum([0, *self.sizes])[:-1]
        self.num_samples = int(num_samples or max(self.sizes))
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.infinite = infinite
        self.epoch = 0
        self.skip = 0

    @property
    def samples_per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch (and skip this rank's first ``skip`` samples of it)."""
        self.epoch, self.skip = epoch, skip

    def resume(self, samples_seen: int) -> None:
        """Position the sampler after ``samples_seen`` samples of this rank (epochs included)."""
        self.set_epoch(*divmod(samples_seen, self.samples_per_rank))

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(global_indices, sample_seeds)`` of the whole epoch, all ranks, ``(samples_per_rank*world,)``."""
        rng = np.random.default_rng([self.seed, epoch])
        total = self.samples_per_rank * self.world_size
        members = rng.choice(len(self.sizes), size=total, p=self.probabilities)
        indices = np.empty(total, dtype=np.int64)
        for member, size in enumerate(self.sizes):
            where = np.flatnonzero(members == member)
            if len(where) == 0:
                continue
            laps = -(-len(where) // size)
            order = np.concatenate([rng.permutation(size) for _ in range(laps)])[: len(where)]
            indices[where] = self.offsets[member] + order
        seeds = rng.integers(0, 2**62, size=total, dtype=np.int64)
        return indices, seeds

    def __len__(self) -> int:
        """Samples left in the current epoch for this rank (an ``infinite`` sampler goes on after them)."""
        return self.samples_per_rank - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        mine = slice(self.rank, None, self.world_size)
        while True:
            indices, seeds = self.epoch_order(epoch)
            yield from list(zip(indices[mine].tolist(), seeds[mine].tolist()))[skip:]
            if not self.infinite:
                return
            epoch, skip = epoch + 1, 0


# --------------------------------------------------------------------------------------------------------------
# accelerate
# --------------------------------------------------------------------------------------------------------------
def make_accelerator(
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
    log_with: str | None = None,
    project_dir: str | Path | None = None,
    find_unused_parameters: bool = False,
    cpu: bool | None = None,
):
    """An ``accelerate.Accelerator`` (DDP when launched with several processes).

    ``cpu=None``: True when no CUDA device is visible, so that ``torchrun --nproc_per_node=N`` on a CPU machine
    runs DDP over gloo (accelerate only sets up multi-process CPU training when told ``cpu=True``).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    return Accelerator(
        cpu=not torch.cuda.is_available() if cpu is None else cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(project_dir) if project_dir else None),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )


def seed_process(seed: int, accelerator) -> None:
    """Seed python, numpy and torch (all devices) with ``seed + process_index``."""
    from accelerate.utils import set_seed

    set_seed(seed + accelerator.process_index)


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` (on failure it is removed)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"{step:09d}"


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    extra: dict[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Save the prepared model(s), optimizer(s), scheduler(s), grad scaler, every process's RNG states and
    ``{"step": step, **extra}`` to ``<output_dir>/checkpoints/<step>/``; update ``checkpoints/last``.

    Collective: call it on every process. The folder appears under its final name only when complete.
    ``keep_last``: delete older checkpoints beyond this many (None: keep all).
    """
    final = checkpoint_dir(output_dir, step)
    staging = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "num_processes": accelerator.num_processes, **(extra or {})}
        (staging / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        link = final.parent / LAST_CHECKPOINT_LINK
        tmp_link = final.parent / f".{LAST_CHECKPOINT_LINK}.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(final.name)
        os.replace(tmp_link, link)
        if keep_last is not None:
            done = sorted(p for p in final.parent.iterdir() if p.name.isdigit() and p.is_dir())
            for old in done[: max(0, len(done) - keep_last)]:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of ``output_dir`` (None if there is none)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.isdigit() and (p / TRAINING_STATE_FILE).is_file())
    return done[-1] if done else None


def load_checkpoint(accelerator, checkpoint: str | Path) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` saved (the objects must already be ``accelerator.prepare``-d);
    returns the training state dict (``step`` and the ``extra`` keys)."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / TRAINING_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a complete training checkpoint (no {TRAINING_STATE_FILE}); "
            f"checkpoints are written by save_checkpoint under <output_dir>/{CHECKPOINTS_DIR}/<step>/"
        )
    state = json.loads(state_file.read_text())
    saved_processes = state.get("num_processes", 1)
    if saved_processes != accelerator.num_processes:
        logger.warning(
            "checkpoint %s was written by %d process(es), resuming with %d: the data order and RNG streams "
            "continue differently than in an uninterrupted run",
            checkpoint,
            saved_processes,
            accelerator.num_processes,
        )
    accelerator.load_state(str(checkpoint))
    return state


class MetricsLog:
    """Append-only JSON-lines metrics file (``{"step": ..., <name>: value}``) written by the main process,
    plus accelerate trackers when the accelerator has any."""

    def __init__(self, path: str | Path, accelerator):
        self.path = Path(path)
        self.accelerator = accelerator

    def log(self, step: int, **metrics: float) -> None:
        if self.accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log(metrics, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------------------------
def write_model_card(
    folder: str | Path,
    *,
    title: str,
    summary: str,
    datasets: Sequence[DatasetSourceConfig],
    steps: int,
    config: dict[str, Any],
    base_model: str | None = None,
    metrics: dict[str, float] | None = None,
    usage: str | None = None,
    library_name: str | None = None,
    tags: Sequence[str] = (),
):
    """Write ``<folder>/README.md``: a Hub model card (YAML metadata + datasets, steps, metrics, usage and
    the full training config). Returns the ``huggingface_hub.ModelCard``."""
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    hub_datasets = [d.repo_id for d in datasets if d.root is None]
    data = ModelCardData(
        library_name=library_name,
        tags=["lerobot", "defi", *tags],
        datasets=hub_datasets or None,
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        license="apache-2.0",
    )
    total = sum(d.weight for d in datasets)
    rows = "\n".join(
        f"| `{d.repo_id}` | {d.weight / total:.3f} | {'local: ' + str(d.root) if d.root else 'Hub'} |"
        for d in datasets
    )
    lines = [
        f"# {title}",
        "",
        summary,
        "",
        "## Training data",
        "",
        "| dataset | mixture weight | source |",
        "|---|---|---|",
        rows,
        "",
        "## Training",
        "",
        f"- optimisation steps: **{steps}**",
    ]
    if base_model:
        lines.append(f"- initialised from: `{base_model}`")
    for name, value in (metrics or {}).items():
        lines.append(f"- {name}: {value:.6g}" if isinstance(value, float) else f"- {name}: {value}")
    if usage:
        lines += ["", "## Usage", "", usage]
    lines += [
        "",
        "## Training configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(Path(folder) / "README.md")
    return card


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str = "Upload model",
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the commit URL. Main process only."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
        revision=revision,
    )
    return str(getattr(commit, "commit_url", commit))
