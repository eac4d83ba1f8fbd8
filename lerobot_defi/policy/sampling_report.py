"""Which frames ``lerobot-train`` can start a training sample from, per task, said at the start of training.

LeRobot's sampler (``EpisodeAwareSampler``) starts samples only at frames ``0 .. length - drop_n_last_frames - 1``
of each episode: an episode of at most ``drop_n_last_frames`` frames gives none and is skipped with one sampler
warning per episode (the default 20 is the authors' setting, docs/method.md §4.7; CALVIN's LED demonstrations are
about 20 frames long). :func:`check_sampleable_frames` logs how many frames and episodes of the dataset, per task
where it has tasks, cannot be sampled, and raises :class:`UnsampleableDataError` when a task or the whole dataset
would have no frame left, naming the episodes' lengths and how to fix it.

A task is an episode's task (``meta/episodes``' ``tasks``); an episode with several counts for each of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

logger = logging.getLogger(__name__)

OPTION = "--policy.drop_n_last_frames"
NO_TASK = "(no task)"


class UnsampleableDataError(ValueError):
    """A task or the whole dataset has no frame that training can start a sample from."""


@dataclass
class SampleableFrames:
    """Frames and episodes of one task (or of the whole dataset), and what ``drop_n_last_frames`` leaves of them."""

    name: str
    episodes: int = 0
    frames: int = 0
    sampleable_frames: int = 0
    # Lengths of the episodes that give no sampleable frame.
    lost_episode_lengths: list[int] = field(default_factory=list)

    def add(self, length: int, drop_n_last_frames: int) -> None:
        self.episodes += 1
        self.frames += length
        self.sampleable_frames += max(0, length - drop_n_last_frames)
        if length <= drop_n_last_frames:
            self.lost_episode_lengths.append(length)

    @property
    def lost_episodes(self) -> int:
        return len(self.lost_episode_lengths)

    def describe_lost(self) -> str:
        lengths = self.lost_episode_lengths
        span = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)}-{max(lengths)}"
        return f"{len(lengths)} episode(s) of {span} frames"


@dataclass
class SamplingReport:
    """``total`` over the counted episodes and ``tasks`` per task (empty when the dataset has no tasks)."""

    drop_n_last_frames: int
    total: SampleableFrames
    tasks: list[SampleableFrames]

    @property
    def vanished_tasks(self) -> list[SampleableFrames]:
        return [task for task in self.tasks if task.episodes and task.sampleable_frames == 0]

    def format(self) -> str:
        """Readable lines: the totals, then one line per task (every task when any loses an episode)."""
        total, n = self.total, self.drop_n_last_frames
        share = total.sampleable_frames / total.frames if total.frames else 0.0
        lost = (
            f"{total.lost_episodes} episode(s) of at most {n} frames give none"
            if total.lost_episodes
            else "every episode gives some"
        )
        lines = [
            f"drop_n_last_frames={n}: training samples start from {total.sampleable_frames} of {total.frames} "
            f"frames ({share:.0%}) of {total.episodes} episodes; {lost}"
        ]
        if self.tasks and total.lost_episodes:
            width = max(len(task.name) for task in self.tasks)
            lines.append(f"  {'task':{width}s}  episodes  frames  sampleable  episodes giving none")
            lines += [
                f"  {task.name:{width}s}  {task.episodes:8d}  {task.frames:6d}  {task.sampleable_frames:10d}  "
                f"{task.lost_episodes:20d}" + ("  <- no frame left" if task.sampleable_frames == 0 else "")
                for task in self.tasks
            ]
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`UnsampleableDataError` when the dataset or a task has no sampleable frame."""
        n = self.drop_n_last_frames
        if self.total.sampleable_frames == 0:
            lost = [self.total]
            what = f"the whole dataset ({self.total.describe_lost()})"
        elif self.vanished_tasks:
            lost = self.vanished_tasks
            what = f"{len(lost)} task(s): " + "; ".join(f"{t.name!r} ({t.describe_lost()})" for t in lost)
        else:
            return
        # The largest value that leaves every vanished task (or the dataset) one frame of its longest episode.
        fix = max(0, min(max(t.lost_episode_lengths) for t in lost) - 1)
        raise UnsampleableDataError(
            f"{OPTION}={n} leaves no frame to train on for {what}: LeRobot's sampler starts a training sample "
            f"only at frames 0 .. length - {n + 1} of an episode, so episodes of at most {n} frames are skipped. "
            f"Lower it, e.g. {OPTION}={fix} (a smaller value pads the action chunks near the end of an episode "
            "instead), or train without these episodes (--dataset.episodes)."
        )


def sampling_report(
    lengths: Sequence[int], tasks: Sequence[Sequence[str]] | None, drop_n_last_frames: int
) -> SamplingReport:
    """The report of episodes of ``lengths`` frames with ``tasks`` (a list of task strings per episode, or None
    when the dataset has none)."""
    total = SampleableFrames("dataset")
    per_task: dict[str, SampleableFrames] = {}
    for index, length in enumerate(lengths):
        total.add(int(length), drop_n_last_frames)
        if tasks is None:
            continue
        for task in tasks[index] or [NO_TASK]:
            per_task.setdefault(task, SampleableFrames(task)).add(int(length), drop_n_last_frames)
    return SamplingReport(drop_n_last_frames, total, sorted(per_task.values(), key=lambda t: t.name))


def command_line_episodes() -> list[int] | None:
    """The episodes ``--dataset.episodes=[...]`` selects on LeRobot's command line, or in the file of its
    ``--config_path`` (read as LeRobot reads ``--policy.path``); None: every episode. The policy is given the
    dataset's metadata only, not the selection."""
    from lerobot.configs import parser

    try:
        episodes = yaml.safe_load(parser.parse_arg("dataset.episodes") or "null")
        config_path = parser.parse_arg("config_path")
        if episodes is None and config_path and Path(config_path).is_file():
            dataset = (yaml.safe_load(Path(config_path).read_text()) or {}).get("dataset") or {}
            episodes = dataset.get("episodes")
    except (yaml.YAMLError, AttributeError):
        return None
    return [int(e) for e in episodes] if isinstance(episodes, list) else None


def check_sampleable_frames(
    dataset_meta, drop_n_last_frames: int, episodes: Sequence[int] | None = None
) -> None:
    """Log the report of ``dataset_meta`` (a ``LeRobotDatasetMetadata``; ``episodes``: the episode indices
    trained on, default all) and raise :class:`UnsampleableDataError` when a task or everything vanishes."""
    table = dataset_meta.episodes
    if table is None or len(table) == 0:
        return
    lengths = np.asarray(table["dataset_to_index"]) - np.asarray(table["dataset_from_index"])
    tasks = list(table["tasks"]) if "tasks" in table.column_names else None
    if tasks is not None and not any(tasks):
        tasks = None
    if episodes is not None:
        lengths = lengths[list(episodes)]
        tasks = [tasks[e] for e in episodes] if tasks is not None else None
    report = sampling_report(lengths, tasks, drop_n_last_frames)
    log = logger.warning if report.total.lost_episodes else logger.info
    log("%s", report.format())
    report.check()
