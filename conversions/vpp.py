"""``lerobot-defi-convert vpp``: VPP-format video sets <-> LeRobotDataset.

Forward (``convert_vpp``): one LeRobot episode per annotation JSON of a VPP dataset folder (``bridge``,
``rt1``, ``sthv2``, ``calvin``, ...), with

* ``observation.images.<camera>`` for every camera of the annotation (``rgb`` from ``rgb.mp4``, else
  ``camera<k>``; see ``vpp_format``), resized to ``image_size`` (default 256x256, the GFDM's input and the
  size VPP's latents were computed at; ``None`` keeps the native size);
* ``task`` = ``texts[0]``; ``action`` / ``observation.state`` when the annotation has them (an ``n - 1``
  action list gets its last action repeated for the final frame);
* fps = the first video's frame rate unless given.

The precomputed SVD latents are optional: missing files are listed in the report; with
``export_latents`` the present ones are copied next to the dataset as
``<root>/vpp_latents/<camera>/episode_<index>.pt`` (float32 (T, 4, 32, 32)) for GFDM training.

Reverse (``export_vpp``, command ``lerobot-defi-convert vpp export``): LeRobotDataset -> VPP layout
(``vpp_export``).

Examples::

    lerobot-defi-convert vpp --raw_dir=/data/vpp/bridge --repo_id=me/vpp_bridge --export_latents=true
    lerobot-defi-convert vpp export --repo_id=me/calvin_abc --output_dir=/data/vpp/calvin --split=train
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lerobot_defi.command_line import CommandLineError, parse_command_line

from .conversion_errors import ConversionInputError, report_bad_input
from .episode_writer import (
    WRITER_VIDEO_BACKEND,
    ConversionOutputConfig,
    ConversionReport,
    EpisodeFrames,
    default_root,
    write_episodes,
)
from .vpp_episodes import VPPPlan, plan_vpp_conversion, read_vpp_episode
from .vpp_export import VPPExportReport, export_vpp
from .vpp_format import (
    LATENT_SIDECAR_DIR,
    VPPFormatError,
    check_latent,
    find_annotations,
    latent_sidecar_path,
    read_annotation,
)

__all__ = ["VPPConversionReport", "VPPExportReport", "convert_vpp", "export_vpp", "main"]

logger = logging.getLogger(__name__)


@dataclass
class VPPConversionReport(ConversionReport):
    """``ConversionReport`` plus the latent files that were absent or unusable (path: reason)."""

    missing_latents: dict[str, str] = field(default_factory=dict)
    exported_latents: int = 0

    def summary(self) -> str:
        lines = [super().summary()]
        if self.exported_latents:
            lines.append(
                f"  {self.exported_latents} latent file(s) copied to {self.root / LATENT_SIDECAR_DIR}"
            )
        if self.missing_latents:
            lines.append(f"  {len(self.missing_latents)} latent file(s) missing or unusable (not fatal):")
            lines += [f"    {path}: {why}" for path, why in list(self.missing_latents.items())[:20]]
        return "\n".join(lines)


def _read(plan: VPPPlan, payload: tuple[str, str]) -> EpisodeFrames:
    split, json_path = payload
    annotation = read_annotation(json_path, plan.dataset_dir, split)
    frames = read_vpp_episode(plan, annotation)
    latents = [
        (camera, annotation.latent_paths[k] if k < len(annotation.latent_paths) else None,
         annotation.declared_latent_paths[k] if k < len(annotation.declared_latent_paths) else None)
        for k, camera in enumerate(annotation.camera_names)
    ]  # fmt: skip
    return EpisodeFrames(frames, extra={"latents": latents, "num_frames": annotation.num_frames})


def convert_vpp(
    raw_dir: str | Path,
    repo_id: str,
    *,
    root: str | Path | None = None,
    splits: list[str] | None = None,
    image_size: tuple[int, int] | None = (256, 256),
    fps: int | None = None,
    export_latents: bool = False,
    max_episodes: int | None = None,
    num_workers: int = 0,
    skip_bad: bool = False,
    overwrite: bool = False,
    push_to_hub: bool = False,
    private: bool = False,
    progress: bool = True,
) -> VPPConversionReport:
    """Convert the VPP dataset folder ``raw_dir`` (annotation/<split>/*.json + videos) into ``repo_id``.

    splits: annotation splits to include (default: all); the LeRobot schema (cameras, action/state sizes,
    fps) comes from the first annotation that reads. Bad annotations/videos stop the run unless ``skip_bad``.
    """
    raw_dir = Path(raw_dir)
    found = find_annotations(raw_dir, splits)
    if max_episodes is not None:
        found = found[:max_episodes]
    # The schema comes from the first annotation whose JSON and videos read; a bad one stops the run like a bad
    # later episode does (same message), or is skipped with skip_bad.
    bad_at_plan: dict[str, str] = {}
    plan = None
    for split, json_path in found:
        key = f"{split}/{json_path.stem}"
        try:
            plan = plan_vpp_conversion(
                raw_dir, read_annotation(json_path, raw_dir, split), image_size=image_size, fps=fps
            )
            break
        except VPPFormatError as err:
            if not skip_bad:
                raise ConversionInputError(
                    f"{err} [source episode {key}]; this run wrote nothing: fix the input and run the same "
                    "command again, or add --skip_bad=true to skip such episodes"
                ) from err
            logger.warning("skipping %s: %s", key, err)
            bad_at_plan[key] = str(err)
    if plan is None:
        raise ConversionInputError(f"{raw_dir}: no readable annotation among {len(found)}")
    root = Path(root) if root is not None else default_root(repo_id)
    missing: dict[str, str] = {}
    exported = 0

    def on_saved(key: str, episode_index: int, episode: EpisodeFrames) -> None:
        nonlocal exported
        for camera, path, declared in episode.extra["latents"]:
            if path is None:
                missing[f"{key}: {declared or 'no latent_videos entry'}"] = "file not found"
                continue
            problem = check_latent(path, episode.extra["num_frames"])
            if problem is not None:
                missing[str(path)] = problem
            elif export_latents:
                target = latent_sidecar_path(root, camera, episode_index)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                exported += 1

    items = [(f"{split}/{path.stem}", (split, str(path))) for split, path in found]
    base = write_episodes(
        repo_id=repo_id,
        root=root,
        fps=plan.fps,
        features=plan.features(),
        items=[item for item in items if item[0] not in bad_at_plan],
        read_episode=functools.partial(_read, plan),
        bad_input_errors=(ValueError,),
        robot_type=raw_dir.name,
        num_workers=num_workers,
        skip_bad=skip_bad,
        overwrite=overwrite,
        push_to_hub=False,
        private=private,
        on_saved=on_saved,
        progress=progress,
        description=f"VPP {raw_dir.name}",
    )
    report = VPPConversionReport(**vars(base), missing_latents=missing, exported_latents=exported)
    report.bad.update(bad_at_plan)
    if push_to_hub:  # after the latent side files are in place, so they travel with the dataset
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        LeRobotDataset(repo_id, root=root, video_backend=WRITER_VIDEO_BACKEND).push_to_hub(private=private)
    return report


@dataclass(kw_only=True)
class VPPConvertConfig(ConversionOutputConfig):
    """lerobot-defi-convert vpp: a VPP dataset folder (annotation/<split>/*.json + videos) -> LeRobotDataset v3.
    The reverse direction: lerobot-defi-convert vpp export --help. Example:
    lerobot-defi-convert vpp --raw_dir=/data/vpp/bridge --repo_id=me/vpp_bridge --export_latents=true"""

    # VPP dataset folder, e.g. /data/vpp/bridge.
    raw_dir: Path
    # Annotation splits to convert, e.g. '[train,val]' (default: all).
    splits: list[str] | None = None
    # (height, width) every camera is resized to, e.g. '[256,256]'; null keeps the videos' native size.
    image_size: tuple[int, int] | None = (256, 256)
    # Frame rate of the dataset (default: the first video's).
    fps: int | None = None
    # Copy the SVD latents to <root>/vpp_latents (where the GFDM trainer reads them).
    export_latents: bool = False


@dataclass(kw_only=True)
class VPPExportConfig:
    """lerobot-defi-convert vpp export: LeRobotDataset -> VPP layout (annotation/<split>/<i>.json,
    videos/<split>/<i>/<camera>.mp4, latent_videos/ when the dataset carries vpp_latents/). Example:
    lerobot-defi-convert vpp export --repo_id=me/calvin_abc --output_dir=/data/vpp/calvin --split=train"""

    # LeRobot dataset repo id.
    repo_id: str
    # Local dataset folder (default: the LeRobot cache / Hub).
    root: Path | None = None
    # VPP dataset folder to write.
    output_dir: Path
    # Split folder name to write.
    split: str = "train"
    # Camera keys or names in VPP camera order, e.g. '[static,gripper]' (default: all).
    cameras: list[str] | None = None
    # Export only the first N episodes.
    max_episodes: int | None = None


def export_main(argv: list[str]) -> int:
    try:
        cfg = parse_command_line(VPPExportConfig, argv, prog="lerobot-defi-convert vpp export")
        report = export_vpp(
            cfg.repo_id, cfg.output_dir, root=cfg.root, split=cfg.split, cameras=cfg.cameras,
            max_episodes=cfg.max_episodes,
        )  # fmt: skip
    except (CommandLineError, ValueError, FileNotFoundError) as err:
        return report_bad_input(err)
    print(
        f"{report.output_dir}: {len(report.written)} episodes written, {len(report.skipped_existing)} already "
        f"there, {len(report.missing_latents)} latent file(s) not available"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    try:
        cfg = parse_command_line(VPPConvertConfig, argv, prog="lerobot-defi-convert vpp")
        report = convert_vpp(
            cfg.raw_dir,
            cfg.repo_id,
            root=cfg.root,
            splits=cfg.splits,
            image_size=cfg.image_size,
            fps=cfg.fps,
            export_latents=cfg.export_latents,
            max_episodes=cfg.max_episodes,
            num_workers=cfg.num_workers,
            skip_bad=cfg.skip_bad,
            overwrite=cfg.overwrite,
            push_to_hub=cfg.push_to_hub,
            private=cfg.private,
        )
    except (CommandLineError, ConversionInputError, VPPFormatError) as err:
        return report_bad_input(err)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
