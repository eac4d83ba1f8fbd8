"""The LeRobotDatasets a pretraining run reads: one :class:`DatasetSourceConfig` per member of a mixture (extended
with model-specific fields by ``gfdm.clips`` and ``gidm.frame_pairs``), opened with errors that name the source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    # "torchcodec" | "pyav" | None (LeRobot's default, found once per process: :func:`resolved_video_backend`).
    video_backend: str | None = None

    def __post_init__(self):
        if not self.repo_id:
            raise ValueError("every dataset needs a repo_id (a Hub id, or any name together with root)")
        if not self.weight > 0:
            raise ValueError(f"dataset {self.repo_id}: weight must be > 0, got {self.weight}")


def _check_dataset_folder(source: DatasetSourceConfig) -> None:
    """A local ``root`` must be a LeRobotDataset folder (hold meta/info.json)."""
    if source.root is not None and not (Path(source.root) / "meta" / "info.json").is_file():
        raise FileNotFoundError(
            f"dataset {source.repo_id}: {source.root} is not a LeRobotDataset folder (no meta/info.json); "
            "expected the output of a LeRobot converter (meta/, data/, videos/)"
        )


def open_metadata(source: DatasetSourceConfig):
    """The ``LeRobotDatasetMetadata`` of ``source`` (a local folder via ``root``, else the Hub cache / download)
    with errors that name the dataset."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    _check_dataset_folder(source)
    try:
        return LeRobotDatasetMetadata(source.repo_id, root=source.root)
    except Exception as err:  # LeRobot's Hub/offline errors do not name the dataset
        raise RuntimeError(f"could not open dataset {source.repo_id} (root={source.root}): {err}") from err


def resolved_video_backend(source: DatasetSourceConfig) -> str:
    """``source.video_backend``, else the decoder LeRobot would pick, probed once per process.

    Passing ``None`` to LeRobot's decoders makes it probe again, and log a warning without torchcodec, at every
    call: once per clip in GFDM pretraining (48,000 lines in 1500 steps of 32 clips)."""
    from lerobot_defi.conversions.video_backend import video_backend

    return source.video_backend or video_backend()[0]


def load_lerobot_dataset(source: DatasetSourceConfig, episodes: list[int] | None = None):
    """Open ``source`` (a local folder via ``root``, else the Hub cache / download) for ``episodes``."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _check_dataset_folder(source)
    try:
        return LeRobotDataset(
            source.repo_id, root=source.root, episodes=episodes, video_backend=resolved_video_backend(source)
        )
    except Exception as err:  # LeRobot's Hub/offline errors do not name the dataset
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
