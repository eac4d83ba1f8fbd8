"""``lerobot-defi-convert oxe``: an Open X-Embodiment RLDS builder directory -> LeRobotDataset.

Reads ``<dataset>/<version>/`` (``dataset_info.json``, ``features.json``, TFRecord shards) without TensorFlow
(``rlds_reader`` / ``rlds_builder``) and writes one LeRobot episode per RLDS episode with the standardized
keys of ``oxe_episodes`` (``observation.images.primary`` / ``.wrist`` videos, ``observation.state``,
``action``, per-frame ``task``) at the dataset's control frequency from the ``oxe_datasets`` table.
Episodes without a language instruction are skipped (GIDM pretraining needs one, spec 3.3) unless
``--keep-unlabeled``.

Example::

    lerobot-defi-convert oxe --raw-dir /data/oxe/fractal20220817_data/0.1.0 --repo-id me/fractal --num-workers 4
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from .episode_writer import (
    ConversionInputError,
    ConversionReport,
    EpisodeFrames,
    add_output_arguments,
    report_bad_input,
    write_episodes,
)
from .oxe_datasets import UnknownOXEDatasetError
from .oxe_episodes import OXEPlan, plan_conversion, read_oxe_episode
from .rlds_builder import RLDSBuilder, RLDSFormatError
from .rlds_reader import ExampleDecodeError, RecordLocation, TFRecordError, index_tfrecord

BAD_INPUT_ERRORS = (RLDSFormatError, TFRecordError, ExampleDecodeError, ValueError)


def _read(plan: OXEPlan, location: RecordLocation) -> EpisodeFrames:
    return EpisodeFrames(read_oxe_episode(plan, location))


def _default_root(repo_id: str) -> Path:
    from lerobot.utils.constants import HF_LEROBOT_HOME

    return Path(HF_LEROBOT_HOME) / repo_id


def convert_oxe(
    raw_dir: str | Path,
    repo_id: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    dataset_name: str | None = None,
    fps: int | None = None,
    max_episodes: int | None = None,
    num_workers: int = 0,
    skip_bad: bool = False,
    keep_unlabeled: bool = False,
    verify_crc: bool = True,
    overwrite: bool = False,
    push_to_hub: bool = False,
    private: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert split ``split`` of the RLDS builder directory ``raw_dir`` into LeRobotDataset ``repo_id``.

    dataset_name: table row to use (default: the ``name`` in dataset_info.json); fps: override of the table's
    control frequency; max_episodes: convert only the first N RLDS episodes (quick looks; re-run to resume).
    Unreadable shards/records stop the run unless ``skip_bad`` (then they are listed in the report).
    """
    builder = RLDSBuilder(raw_dir)
    plan = plan_conversion(
        builder, dataset_name=dataset_name, fps=fps, keep_unlabeled=keep_unlabeled, verify_crc=verify_crc
    )
    items: list[tuple[str, RecordLocation]] = []
    bad_shards: dict[str, str] = {}
    for shard in builder.shard_paths(split):
        if max_episodes is not None and len(items) >= max_episodes:
            break
        try:
            locations = index_tfrecord(shard)
        except TFRecordError as err:
            if not skip_bad:
                raise ConversionInputError(
                    f"{err}; this run wrote nothing: fix the shard and run the same command again, or add "
                    "--skip-bad to skip this shard"
                ) from err
            bad_shards[shard.name] = str(err)
            continue
        items.extend((f"{shard.name}@{loc.offset}", loc) for loc in locations)
    if max_episodes is not None:
        items = items[:max_episodes]
    report = write_episodes(
        repo_id=repo_id,
        root=root if root is not None else _default_root(repo_id),
        fps=plan.fps,
        features=plan.features(),
        items=items,
        read_episode=functools.partial(_read, plan),
        bad_input_errors=BAD_INPUT_ERRORS,
        robot_type=plan.dataset_name,
        num_workers=num_workers,
        skip_bad=skip_bad,
        overwrite=overwrite,
        push_to_hub=push_to_hub,
        private=private,
        progress=progress,
        description=f"{plan.dataset_name} {split}",
    )
    report.bad.update(bad_shards)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lerobot-defi-convert oxe",
        description="Open X-Embodiment RLDS builder directory (<dataset>/<version>/) -> LeRobotDataset v3. "
        "No TensorFlow needed.",
    )
    parser.add_argument(
        "--raw-dir", required=True, help="builder dir with dataset_info.json, features.json, shards"
    )
    parser.add_argument("--split", default="train", help="RLDS split to convert (default: train)")
    parser.add_argument(
        "--dataset-name", help="table row to use when the folder name is not the dataset's name"
    )
    parser.add_argument("--fps", type=int, help="override the table's control frequency")
    parser.add_argument(
        "--keep-unlabeled", action="store_true", help="keep episodes without language (task '')"
    )
    parser.add_argument("--no-crc-check", action="store_true", help="do not verify TFRecord CRCs (faster)")
    add_output_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = convert_oxe(
            args.raw_dir,
            args.repo_id,
            root=args.root,
            split=args.split,
            dataset_name=args.dataset_name,
            fps=args.fps,
            max_episodes=args.max_episodes,
            num_workers=args.num_workers,
            skip_bad=args.skip_bad,
            keep_unlabeled=args.keep_unlabeled,
            verify_crc=not args.no_crc_check,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
        )
    except (ConversionInputError, RLDSFormatError, TFRecordError, UnknownOXEDatasetError) as err:
        return report_bad_input(err)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
