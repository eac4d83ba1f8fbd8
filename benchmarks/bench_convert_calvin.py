"""Speed of the CALVIN converter, and how much of its wall time LeRobot's writer/video encoder takes.

Three measurements per repeat, on the same episodes:

* Video encoding alone: the frames of both cameras fed to LeRobot's ``StreamingVideoEncoder`` (the encoder the
  writer uses, same settings), nothing else: how much of the converter's wall time video encoding needs.
* LeRobot alone: every frame already read into memory, written with ``LeRobotDataset.create`` / ``add_frame`` /
  ``save_episode`` / ``finalize`` (the converter's features and encoder settings). This is the floor: video
  encoding (streaming AV1, LeRobot's default) plus LeRobot's parquet/metadata writing.
* Converter: ``convert_calvin`` from the npz files with reader processes. Its wall time is split into the time
  spent inside LeRobot's calls (``create/resume/add_frame/save_episode/finalize``: encoding and writing), the
  time the writer waited for reader processes, and the rest (the converter's own work: stacking, checks,
  progress file, checkpoints, CALVIN metadata).

Overhead on top of the encoder = (converter wall - LeRobot alone) / converter wall; the target is <= 10 %.
LeRobot is imported inside functions: reader processes are spawned and re-import this script as their main module.

    python benchmarks/bench_convert_calvin.py                         # the repository's CALVIN test slice
    python benchmarks/bench_convert_calvin.py --raw_dir=../shared/data/calvin_mini --split=all --num_workers=2
"""

import functools
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lerobot_defi.conversions import episode_writer
from lerobot_defi.conversions.calvin import convert_calvin
from lerobot_defi.conversions.calvin_format import (
    ReadOptions,
    features,
    plan_episodes,
    read_episode,
    read_fps,
    split_folders,
)

from lerobot_defi.command_line import parse_or_exit

DEFAULT_RAW = Path(__file__).resolve().parents[1] / "tests" / "data" / "calvin_mini_slice"
LEROBOT_CALLS = ("create", "resume", "add_frame", "save_episode", "finalize")
Split = Literal["training", "validation", "all"]
Layout = Literal["windows", "play"]
seconds: dict[str, float] = defaultdict(float)
reader_waits: list[float] = []


def _timed(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start

    return wrapper


def _timed_generator(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        generator = function(*args, **kwargs)
        while True:
            start = time.perf_counter()
            try:
                item = next(generator)
            except StopIteration:
                return
            finally:
                reader_waits.append(time.perf_counter() - start)
            yield item

    return wrapper


def install_timers() -> None:
    """Count the time spent in LeRobot's writer calls and waiting for reader processes (main process only)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    for name in LEROBOT_CALLS:
        attribute = LeRobotDataset.__dict__[name]
        if isinstance(attribute, classmethod):
            setattr(LeRobotDataset, name, classmethod(_timed("lerobot", attribute.__func__)))
        else:
            setattr(LeRobotDataset, name, _timed("lerobot", attribute))
    episode_writer._read_ahead = _timed_generator(episode_writer._read_ahead)


def encoding_alone(episodes, fps: int, work: Path) -> float:
    """Encode both cameras of pre-read episodes with LeRobot's streaming encoder only; returns seconds."""
    from lerobot.datasets.video_utils import StreamingVideoEncoder

    video_keys = [k for k, v in features(ReadOptions()).items() if v["dtype"] == "video"]
    work.mkdir(parents=True)
    encoder = StreamingVideoEncoder(fps=fps, queue_maxsize=0)  # unbounded queue: never drops a frame
    start = time.perf_counter()
    for episode in episodes:
        encoder.start_episode(video_keys, work)
        for i in range(episode.length):
            for key in video_keys:
                encoder.feed_frame(key, episode.frames[key][i])
        encoder.finish_episode()
    encoder.close()
    return time.perf_counter() - start


def lerobot_alone(episodes, fps: int, root: Path) -> float:
    """Write pre-read episodes with LeRobot only; returns seconds."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    start = time.perf_counter()
    dataset = LeRobotDataset.create(
        "bench/lerobot_alone", fps=fps, features=features(ReadOptions()), root=root, use_videos=True,
        metadata_buffer_size=1, streaming_encoding=True, encoder_queue_maxsize=0, video_files_size_in_mb=20,
    )  # fmt: skip
    for episode in episodes:
        keys = [k for k in episode.frames if k != "task"]
        for i in range(episode.length):
            dataset.add_frame({**{k: episode.frames[k][i] for k in keys}, "task": episode.frames["task"][i]})
        dataset.save_episode()
    dataset.finalize()
    return time.perf_counter() - start


@dataclass
class BenchConvertCalvinConfig:
    """Speed of the CALVIN converter, and how much of its wall time LeRobot's writer/video encoder takes."""

    # CALVIN dataset or split folder (default: the repository's CALVIN test slice, tests/data/calvin_mini_slice).
    raw_dir: Path = DEFAULT_RAW
    # Which split folders to convert: training, validation or all.
    split: Split = "all"
    # Episodes: one per language window ("windows") or the play segments with per-frame instructions ("play").
    layout: Layout = "windows"
    # Reader processes of the converter.
    num_workers: int = 2
    # Times the three measurements are repeated (each repeat writes fresh datasets).
    repeats: int = 2


def main() -> None:
    args = parse_or_exit(BenchConvertCalvinConfig)

    folders = split_folders(args.raw_dir, args.split)
    fps = read_fps(folders[0][1])
    specs = [spec for name, folder in folders for _, spec in plan_episodes(name, folder, args.layout)]
    episodes = [read_episode(ReadOptions(), spec) for spec in specs]
    frames = sum(e.length for e in episodes)
    print(
        f"{args.raw_dir} ({args.split}, {args.layout}): {len(episodes)} episodes, {frames} frames, {fps} fps"
    )
    install_timers()
    work = Path(tempfile.mkdtemp(prefix="bench_calvin_"))
    try:
        for repeat in range(args.repeats):
            encode_s = encoding_alone(episodes, fps, work / f"encode{repeat}")
            seconds.clear()
            alone_s = lerobot_alone(episodes, fps, work / f"alone{repeat}")
            seconds.clear()
            reader_waits.clear()
            start = time.perf_counter()
            convert_calvin(args.raw_dir, "bench/converter", root=work / f"conv{repeat}", layout=args.layout,
                           split=args.split, num_workers=args.num_workers, progress=False)  # fmt: skip
            conv_s = time.perf_counter() - start
            inside, wait = seconds["lerobot"], sum(reader_waits)
            first_wait = reader_waits[0] if reader_waits else 0.0
            own = conv_s - inside - wait
            print(
                f"run {repeat}: video encoding alone {encode_s:.2f} s ({frames / encode_s:.1f} frames/s) | "
                f"LeRobot writer alone {alone_s:.2f} s ({frames / alone_s:.1f} frames/s) | converter {conv_s:.2f} s "
                f"({frames / conv_s:.1f} frames/s, {args.num_workers} reader processes)\n"
                f"  converter wall time: video encoding alone = {encode_s / conv_s:.0%}; inside LeRobot's "
                f"writer calls {inside / conv_s:.0%}; waiting for readers {wait / conv_s:.0%} (first episode "
                f"{first_wait:.2f} s, after it {wait - first_wait:.2f} s); own work {own / conv_s:.0%}\n"
                f"  overhead on top of LeRobot's writer alone {(conv_s - alone_s) / conv_s:.1%} "
                f"({(conv_s - alone_s - first_wait) / conv_s:.1%} without the readers' start-up)",
                flush=True,
            )
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
