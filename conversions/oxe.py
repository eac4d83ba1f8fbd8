"""``lerobot-defi-convert oxe``: an Open X-Embodiment RLDS builder directory -> LeRobotDataset.

Reads ``<dataset>/<version>/`` (``dataset_info.json``, ``features.json``, TFRecord shards) without TensorFlow
(``rlds_reader`` / ``rlds_builder``) and writes one LeRobot episode per RLDS episode with the standardized
keys of ``oxe_episodes`` (``observation.images.primary`` / ``.wrist`` videos, ``observation.state``,
``action``, per-frame ``task``) at the dataset's control frequency from the ``oxe_datasets`` table.
Episodes without a language instruction are skipped (GIDM pretraining needs one, docs/method.md §3.3) unless
``--keep_unlabeled=true``.

Example::

    lerobot-defi-convert oxe --raw_dir=/data/oxe/fractal20220817_data/0.1.0 --repo_id=me/fractal --num_workers=4
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from lerobot_defi.command_line import CommandLineError, parse_command_line

from .conversion_errors import ConversionInputError, report_bad_input
from .episode_writer import (
    ConversionOutputConfig,
    ConversionReport,
    EpisodeFrames,
    default_root,
    write_episodes,
)
from .oxe_datasets import UnknownOXEDatasetError
from .oxe_episodes import OXEPlan, plan_conversion, read_oxe_episode
from .rlds_builder import RLDSBuilder, RLDSFormatError
from .rlds_reader import ExampleDecodeError, RecordLocation, TFRecordError, index_tfrecord

BAD_INPUT_ERRORS = (RLDSFormatError, TFRecordError, ExampleDecodeError, ValueError)


def _read(plan: OXEPlan, location: RecordLocation) -> EpisodeFrames:
    return EpisodeFrames(read_oxe_episode(plan, location))


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
                    "--skip_bad=true to skip this shard"
                ) from err
            bad_shards[shard.name] = str(err)
            continue
        items.extend((f"{shard.name}@{loc.offset}", loc) for loc in locations)
    if max_episodes is not None:
        items = items[:max_episodes]
    report = write_episodes(
        repo_id=repo_id,
        root=root if root is not None else default_root(repo_id),
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


@dataclass(kw_only=True)
class OXEConvertConfig(ConversionOutputConfig):
    """lerobot-defi-convert oxe: an Open X-Embodiment RLDS builder directory (<dataset>/<version>/) ->
    LeRobotDataset v3, without TensorFlow. Example:
    lerobot-defi-convert oxe --raw_dir=/data/oxe/fractal20220817_data/0.1.0 --repo_id=me/fractal --num_workers=4"""

    # Builder directory with dataset_info.json, features.json and the TFRecord shards.
    raw_dir: Path
    # RLDS split to convert.
    split: str = "train"
    # Row of the dataset table to use when the folder's name is not the dataset's name.
    dataset_name: str | None = None
    # Frame rate (default: the dataset's control frequency from the table).
    fps: int | None = None
    # Keep episodes without a language instruction (task '').
    keep_unlabeled: bool = False
    # Verify the TFRecord CRCs (false: faster).
    verify_crc: bool = True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_command_line(OXEConvertConfig, argv, prog="lerobot-defi-convert oxe")
        report = convert_oxe(
            cfg.raw_dir,
            cfg.repo_id,
            root=cfg.root,
            split=cfg.split,
            dataset_name=cfg.dataset_name,
            fps=cfg.fps,
            max_episodes=cfg.max_episodes,
            num_workers=cfg.num_workers,
            skip_bad=cfg.skip_bad,
            keep_unlabeled=cfg.keep_unlabeled,
            verify_crc=cfg.verify_crc,
            overwrite=cfg.overwrite,
            push_to_hub=cfg.push_to_hub,
            private=cfg.private,
        )
    except (
        CommandLineError,
        ConversionInputError,
        RLDSFormatError,
        TFRecordError,
        UnknownOXEDatasetError,
    ) as err:
        return report_bad_input(err)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
