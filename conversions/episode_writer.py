"""Write source episodes into a LeRobotDataset: parallel reading, progress bar, resume, skipping bad input, Hub push.

A converter provides an ordered list of ``(source key, payload)`` items and a picklable ``read_episode``
function ``payload -> EpisodeFrames`` (per-frame arrays + tasks). Episodes are read by ``num_workers``
processes (a bounded read-ahead window keeps the order and the memory in check) and written in order by
the main process (``add_frame`` / ``save_episode``; video encoding happens there). Resume, checkpoints and the
mark of an unfinished dataset: ``conversion_progress.py``; the shared errors: ``conversion_errors.py``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .conversion_errors import ConversionInputError, SkipEpisode
from .conversion_progress import (
    CHECKPOINT_DIR,
    PROGRESS_FILE,
    WRITING,
    load_progress,
    mark_complete,
    mark_incomplete,
    roll_back_to_checkpoint,
    save_progress,
    unmark_for_resume,
    write_checkpoint,
)

logger = logging.getLogger(__name__)

# The writer never decodes video; naming a backend keeps LeRobot from probing torchcodec (a long traceback
# where FFmpeg's shared libraries are missing).
WRITER_VIDEO_BACKEND = "pyav"


def default_root(repo_id: str) -> Path:
    """Where LeRobot keeps a dataset by default: ``$HF_LEROBOT_HOME/<repo_id>``."""
    from lerobot.utils.constants import HF_LEROBOT_HOME

    return Path(HF_LEROBOT_HOME) / repo_id


def quiet_video_encoding() -> None:
    """Keep the encoders' chatter out of the terminal (errors still print): the AV1 encoder's banners (SVT-AV1
    prints ~25 ``Svt[info]`` lines per video through its own logger, whose level comes from ``SVT_LOG``: 1 keeps
    errors), FFmpeg's info lines (``Starting second pass``; LeRobot's encoder re-installs FFmpeg's default
    logger, which reads this level) and the ``datasets`` library's ``Map`` bars for a few rows."""
    import av.logging
    import datasets

    os.environ.setdefault("SVT_LOG", "1")
    av.logging.set_libav_level(av.logging.ERROR)
    datasets.disable_progress_bars()


@dataclass
class EpisodeFrames:
    """One episode ready to write: ``frames`` maps feature keys to ``(T, ...)`` arrays and ``"task"`` to T strings.

    extra: anything the converter wants back after the episode is saved (passed to ``on_saved``).
    """

    frames: dict[str, np.ndarray | list[str]]
    extra: Any = None

    @property
    def length(self) -> int:
        return len(self.frames["task"])


@dataclass
class ConversionReport:
    """Outcome of ``write_episodes``: source keys written now, already present, and skipped as bad (with why)."""

    root: Path
    written: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    total_episodes: int = 0
    total_frames: int = 0

    def summary(self) -> str:
        lines = [
            f"{self.root}: {self.total_episodes} episodes, {self.total_frames} frames "
            f"({len(self.written)} written now, {len(self.already_done)} already there, {len(self.bad)} skipped as bad, "
            f"{len(self.skipped)} skipped by design)"
        ]
        lines += [f"  skipped {key}: {why}" for key, why in list(self.skipped.items())[:20]]
        lines += [f"  skipped {key}: {why}" for key, why in self.bad.items()]
        return "\n".join(lines)


def _read_ahead(
    read_episode: Callable[[Any], EpisodeFrames], items: Sequence[tuple[str, Any]], num_workers: int
) -> Iterator[tuple[str, EpisodeFrames | Exception]]:
    """Yield ``(key, EpisodeFrames | the exception it raised)`` in order, reading 2 x num_workers ahead."""
    if num_workers <= 0:
        for key, payload in items:
            try:
                yield key, read_episode(payload)
            except Exception as err:  # handed to the caller, which decides (skip or stop)
                yield key, err
        return
    # spawn, not fork: the writer side runs encoder threads, and forking a threaded process can deadlock.
    with ProcessPoolExecutor(
        max_workers=num_workers, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        window: deque[tuple[str, Future]] = deque()
        pending = iter(items)
        for key, payload in pending:
            window.append((key, pool.submit(read_episode, payload)))
            if len(window) >= 2 * num_workers:
                break
        while window:
            key, future = window.popleft()
            try:
                yield key, future.result()
            except Exception as err:
                yield key, err
            following = next(pending, None)
            if following is not None:
                window.append((following[0], pool.submit(read_episode, following[1])))


@dataclass(kw_only=True)
class ConversionOutputConfig:
    """The options every ``lerobot-defi-convert`` command shares: the output dataset, how much to convert, reading,
    bad input, overwriting and the Hub (a converter's config adds its own fields)."""

    # LeRobot repo id of the output dataset (e.g. me/calvin_abc).
    repo_id: str
    # Output folder (default: $HF_LEROBOT_HOME/<repo_id>).
    root: Path | None = None
    # Convert only the first N episodes (a quick look; the same command without it resumes).
    max_episodes: int | None = None
    # Reader processes (0: read in the main process).
    num_workers: int = 0
    # Skip unreadable episodes and list them, instead of stopping.
    skip_bad: bool = False
    # Delete an existing output folder first.
    overwrite: bool = False
    # Upload the dataset to the Hub when done.
    push_to_hub: bool = False
    # With push_to_hub: create a private repo.
    private: bool = False


def write_episodes(
    *,
    repo_id: str,
    root: str | Path,
    fps: int,
    features: dict[str, dict],
    items: Sequence[tuple[str, Any]],
    read_episode: Callable[[Any], EpisodeFrames],
    bad_input_errors: tuple[type[BaseException], ...] = (ValueError,),
    robot_type: str | None = None,
    num_workers: int = 0,
    skip_bad: bool = False,
    overwrite: bool = False,
    push_to_hub: bool = False,
    private: bool = False,
    on_saved: Callable[[str, int, EpisodeFrames], None] | None = None,
    on_result: Callable[[str, str, EpisodeFrames | None], str | None] | None = None,
    progress: bool = True,
    description: str = "convert",
    streaming_encoding: bool = True,
    checkpoint_every: int = 200,
    video_files_size_in_mb: int | None = None,
    use_videos: bool = True,
) -> ConversionReport:
    """Convert ``items`` into the LeRobotDataset ``repo_id`` at ``root`` (created, or resumed when present).

    bad_input_errors: exception types that mean "this source episode is bad" (skipped with ``skip_bad``,
    else the run stops with ``ConversionInputError``); any other exception propagates as is.
    on_saved(source_key, episode_index, episode) runs after each saved episode (e.g. to copy side files).
    on_result(source_key, outcome, episode or None) runs after every item, outcome "saved", "skipped" (by design)
    or "bad"; a string it returns is shown beside the progress bar (e.g. a running success rate).
    streaming_encoding: encode video while frames are added (LeRobot's streaming encoder) instead of writing
    PNG files first and encoding at ``save_episode``.
    checkpoint_every: saved episodes between checkpoints (the most work a killed run loses); each checkpoint
    starts new data/video files, so larger values give fewer files.
    video_files_size_in_mb: size at which LeRobot starts a new video file (``None``: LeRobot's default, 200 MB).
    LeRobot appends each episode by rewriting the current file (~3 ms per MB on this machine), so with many
    short episodes a smaller size saves time; it only applies when the dataset is created.
    use_videos: store ``"video"`` features as encoded videos (True) or as PNG images in the parquet files (False:
    larger, no video decoding; but LeRobot decodes a row's images whenever it reads that row, also for the other
    frames of an action chunk, so videos are faster to train from when chunks are long).
    """
    from lerobot.datasets.io_utils import load_info
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    if overwrite and root.exists():
        shutil.rmtree(root)
    progress_state = load_progress(root)
    if progress_state is None and root.exists() and any(root.iterdir()):
        # Only meta/info.json: create() ran, then the run was killed before its progress file; start afresh.
        contents = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
        if contents != ["meta", "meta/info.json"]:
            raise ConversionInputError(
                f"{root} exists and was not written by this converter (no {PROGRESS_FILE}); choose another "
                "--root or pass --overwrite=true"
            )
    if progress_state is not None and not progress_state.get("finalized", False):
        progress_state = roll_back_to_checkpoint(root, progress_state)

    # LeRobot's streaming encoder DROPS a frame (with only a log warning) when its queue stays full for 0.1 s,
    # which happens when the CPU is busy; 0 makes the queue unbounded, so at most one episode's frames wait there.
    encoder_queue_maxsize = 0

    def open_dataset() -> LeRobotDataset:
        unmark_for_resume(root)
        dataset = LeRobotDataset.resume(
            repo_id,
            root=root,
            video_backend=WRITER_VIDEO_BACKEND,
            streaming_encoding=streaming_encoding,
            encoder_queue_maxsize=encoder_queue_maxsize,
            image_writer_threads=image_writer_threads,
        )
        mark_incomplete(dataset, WRITING)
        return dataset

    image_writer_threads = 0
    if not use_videos:  # PNG encoding in LeRobot's writer threads
        features = {k: {**v, "dtype": "image"} if v["dtype"] == "video" else v for k, v in features.items()}
        image_writer_threads = 4

    quiet_video_encoding()
    if progress_state is None:
        shutil.rmtree(root, ignore_errors=True)  # empty, or left by a run killed before its first checkpoint
        dataset = LeRobotDataset.create(
            repo_id, fps=fps, features=features, root=root, robot_type=robot_type, use_videos=use_videos,
            metadata_buffer_size=1, streaming_encoding=streaming_encoding,
            encoder_queue_maxsize=encoder_queue_maxsize, video_files_size_in_mb=video_files_size_in_mb,
            video_backend=WRITER_VIDEO_BACKEND, image_writer_threads=image_writer_threads,
        )  # fmt: skip
        mark_incomplete(dataset, WRITING)
        progress_state = {"repo_id": repo_id, "episodes": [], "bad": {}, "skipped": {}, "finalized": False}
    else:
        # Checked on meta/info.json as it is, before LeRobot reopens the dataset (which unmarks it): a refused run
        # leaves a complete dataset complete and an incomplete one marked.
        info = load_info(root)
        if info.total_episodes != len(progress_state["episodes"]):
            raise ConversionInputError(
                f"{root}: {PROGRESS_FILE} lists {len(progress_state['episodes'])} episodes but the dataset has "
                f"{info.total_episodes}; delete the folder or pass --overwrite=true"
            )
        expected = {k: tuple(v["shape"]) for k, v in features.items()}
        present = {k: tuple(info.features[k]["shape"]) for k in features if k in info.features}
        if present != expected or info.fps != fps:
            raise ConversionInputError(
                f"{root}: the existing dataset (fps {info.fps}, features {present}) does not match this "
                f"run (fps {fps}, features {expected}); use another --root or --overwrite=true"
            )
        dataset = open_dataset()
        progress_state["finalized"] = False
    progress_state["planned"] = len(items)
    save_progress(root, progress_state)
    write_checkpoint(root, progress_state)

    report = ConversionReport(root)
    done = set(progress_state["episodes"])
    report.already_done = [key for key, _ in items if key in done]
    report.skipped = dict(progress_state.setdefault("skipped", {}))
    settled = done | set(progress_state["bad"]) | set(report.skipped)
    todo = [(key, payload) for key, payload in items if key not in settled]
    stopped_by: tuple[str, BaseException] | None = None  # (source key, bad input) that stopped the run
    failure: BaseException | None = None
    bar = tqdm(total=len(todo), desc=description, unit="episode", disable=not progress)
    try:
        with contextlib.closing(_read_ahead(read_episode, todo, num_workers)) as episodes:
            for key, result in episodes:
                bar.update(1)
                try:
                    if isinstance(result, BaseException):
                        raise result
                    _add_episode(dataset, result)
                except SkipEpisode as err:
                    report.skipped[key] = str(err)
                    progress_state["skipped"][key] = str(err)
                    save_progress(root, progress_state)
                    _report_result(bar, on_result, key, "skipped", None)
                    continue
                except bad_input_errors as err:
                    dataset.clear_episode_buffer()
                    if not skip_bad:
                        stopped_by = (key, err)
                        break
                    _warn(bar, f"skipping {key}: {err}")
                    report.bad[key] = str(err)
                    progress_state["bad"][key] = str(err)
                    save_progress(root, progress_state)
                    _report_result(bar, on_result, key, "bad", None)
                    continue
                episode_index = dataset.meta.total_episodes - 1
                progress_state["episodes"].append(key)
                save_progress(root, progress_state)
                report.written.append(key)
                if on_saved is not None:
                    on_saved(key, episode_index, result)
                _report_result(bar, on_result, key, "saved", result)
                since_checkpoint = len(progress_state["episodes"]) - progress_state["checkpoint"]["episodes"]
                if since_checkpoint >= checkpoint_every:
                    dataset.finalize()
                    write_checkpoint(root, progress_state)
                    dataset = open_dataset()
    except BaseException as err:  # an error or Ctrl-C: keep what was saved, mark the dataset incomplete
        failure = err
        raise
    finally:
        bar.close()  # before any message, so that it starts on a line of its own
        if failure is not None and dataset.has_pending_frames():
            dataset.clear_episode_buffer()
        dataset.finalize()
        written, planned = len(progress_state["episodes"]), len(items)
        progress_state["written"] = written
        if stopped_by is None and failure is None:
            mark_complete(dataset)
            progress_state["finalized"] = True
            progress_state.pop("checkpoint", None)
            progress_state.pop("error", None)
            save_progress(root, progress_state)
            shutil.rmtree(root / CHECKPOINT_DIR, ignore_errors=True)
        else:
            if stopped_by is not None:
                progress_state["error"] = f"bad input in source episode {stopped_by[0]}: {stopped_by[1]}"
                why = f"the conversion stopped on bad input after {written} of {planned} episodes"
            else:
                name = type(failure).__name__
                progress_state["error"] = f"{name}: {failure}" if str(failure) else name
                why = f"the conversion stopped ({name}) after {written} of {planned} episodes"
            write_checkpoint(root, progress_state)  # what the next run continues from
            mark_incomplete(dataset, why)
    if stopped_by is not None:
        key, err = stopped_by
        raise ConversionInputError(
            f"{err} [source episode {key}]; {written} of {planned} episodes written, {root} is marked incomplete: "
            "fix the input and run the same command again, or add --skip_bad=true to skip such episodes"
        ) from err
    report.bad.update({k: v for k, v in progress_state["bad"].items() if k not in report.bad})
    report.total_episodes = dataset.meta.total_episodes
    report.total_frames = dataset.meta.total_frames
    if push_to_hub:
        dataset.push_to_hub(private=private)
    return report


def _warn(bar: tqdm, message: str) -> None:
    """A warning that does not break the progress bar (printed above it)."""
    if bar.disable:
        logger.warning(message)
    else:
        bar.write(f"warning: {message}", file=sys.stderr)


def _report_result(bar, on_result, key: str, outcome: str, episode: EpisodeFrames | None) -> None:
    if on_result is not None:
        status = on_result(key, outcome, episode)
        if status:
            bar.set_postfix_str(status, refresh=False)


def _add_episode(dataset, episode: EpisodeFrames) -> None:
    frames = episode.frames
    length = episode.length
    for key, values in frames.items():
        if len(values) != length:
            raise ValueError(f"feature {key!r} has {len(values)} frames, the episode has {length}")
    keys = [k for k in frames if k != "task"]
    for i in range(length):
        frame = {k: frames[k][i] for k in keys}
        frame["task"] = frames["task"][i]
        dataset.add_frame(frame)
    dataset.save_episode()
