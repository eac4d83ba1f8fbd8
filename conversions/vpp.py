"""``lerobot-defi-convert vpp``: VPP-format video sets <-> LeRobotDataset.

Forward (``convert_vpp``): one LeRobot episode per annotation JSON of a VPP dataset folder (``bridge``,
``rt1``, ``sthv2``, ``calvin``, ...), with

* ``observation.images.<camera>`` for every camera of the annotation (``rgb`` from ``rgb.mp4``, else
  ``camera<k>``; see ``vpp_source``), resized to ``image_size`` (default 256x256, the GFDM's input and the
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

    lerobot-defi-convert vpp --raw-dir /data/vpp/bridge --repo-id me/vpp_bridge --export-latents
    lerobot-defi-convert vpp export --repo-id me/calvin_abc --output-dir /data/vpp/calvin --split train
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .episode_writer import (
    WRITER_VIDEO_BACKEND,
    ConversionInputError,
    ConversionReport,
    EpisodeFrames,
    add_output_arguments,
    report_bad_input,
    write_episodes,
)
from .vpp_export import VPPExportReport, export_vpp, latent_sidecar_path
from .vpp_source import (
    VPPFormatError,
    VPPPlan,
    find_annotations,
    plan_vpp_conversion,
    read_annotation,
    read_vpp_episode,
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
            lines.append(f"  {self.exported_latents} latent file(s) copied to {self.root / 'vpp_latents'}")
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


def _check_latent(path: Path, num_frames: int) -> str | None:
    """Why the latent file cannot be used (None when it is a float tensor (num_frames, 4, h, w))."""
    import torch

    try:
        latent = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable files
        return f"cannot be loaded ({type(err).__name__}: {err})"
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4 or not latent.is_floating_point():
        return f"expected a float tensor (T, 4, h, w), got {getattr(latent, 'shape', type(latent).__name__)}"
    if latent.shape[0] != num_frames:
        return f"has {latent.shape[0]} frames, the annotation has {num_frames}"
    return None


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
                    "command again, or add --skip-bad to skip such episodes"
                ) from err
            logger.warning("skipping %s: %s", key, err)
            bad_at_plan[key] = str(err)
    if plan is None:
        raise ConversionInputError(f"{raw_dir}: no readable annotation among {len(found)}")
    root = Path(root) if root is not None else _default_root(repo_id)
    missing: dict[str, str] = {}
    exported = 0

    def on_saved(key: str, episode_index: int, episode: EpisodeFrames) -> None:
        nonlocal exported
        for camera, path, declared in episode.extra["latents"]:
            if path is None:
                missing[f"{key}: {declared or 'no latent_videos entry'}"] = "file not found"
                continue
            problem = _check_latent(path, episode.extra["num_frames"])
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


def _default_root(repo_id: str) -> Path:
    from lerobot.utils.constants import HF_LEROBOT_HOME

    return Path(HF_LEROBOT_HOME) / repo_id


def _image_size(values: list[str]) -> tuple[int, int] | None:
    if values == ["native"]:
        return None
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise argparse.ArgumentTypeError("--image-size takes H W, one size for square frames, or 'native'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lerobot-defi-convert vpp",
        description="VPP dataset folder (annotation/<split>/*.json + videos) -> LeRobotDataset v3. "
        "Reverse direction: 'lerobot-defi-convert vpp export --help'.",
    )
    parser.add_argument("--raw-dir", required=True, help="VPP dataset folder, e.g. /data/vpp/bridge")
    parser.add_argument("--splits", nargs="+", help="annotation splits to convert (default: all)")
    parser.add_argument(
        "--image-size", nargs="+", default=["256", "256"], metavar="H W",
        help="resize frames to H W (default 256 256); 'native' keeps the video size",
    )  # fmt: skip
    parser.add_argument("--fps", type=int, help="frame rate of the dataset (default: the first video's)")
    parser.add_argument(
        "--export-latents", action="store_true", help="copy SVD latents to <root>/vpp_latents"
    )
    add_output_arguments(parser)
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lerobot-defi-convert vpp export",
        description="LeRobotDataset -> VPP layout (annotation/<split>/<i>.json, videos/<split>/<i>/<camera>.mp4, "
        "latent_videos/ when the dataset carries vpp_latents/).",
    )
    parser.add_argument("--repo-id", required=True, help="LeRobot dataset repo id")
    parser.add_argument("--root", help="local dataset folder (default: the LeRobot cache / Hub)")
    parser.add_argument("--output-dir", required=True, help="VPP dataset folder to write")
    parser.add_argument("--split", default="train", help="split folder name to write (default: train)")
    parser.add_argument(
        "--cameras", nargs="+", help="camera keys or names, in VPP camera order (default: all)"
    )
    parser.add_argument("--max-episodes", type=int, help="export only the first N episodes")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        args = build_export_parser().parse_args(argv[1:])
        try:
            report = export_vpp(
                args.repo_id, args.output_dir, root=args.root, split=args.split, cameras=args.cameras,
                max_episodes=args.max_episodes,
            )  # fmt: skip
        except (ValueError, FileNotFoundError) as err:
            return report_bad_input(err)
        print(
            f"{report.output_dir}: {len(report.written)} episodes written, {len(report.skipped_existing)} already "
            f"there, {len(report.missing_latents)} latent file(s) not available"
        )
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        image_size = _image_size(args.image_size)
    except (argparse.ArgumentTypeError, ValueError) as err:
        parser.error(str(err))
    try:
        report = convert_vpp(
            args.raw_dir,
            args.repo_id,
            root=args.root,
            splits=args.splits,
            image_size=image_size,
            fps=args.fps,
            export_latents=args.export_latents,
            max_episodes=args.max_episodes,
            num_workers=args.num_workers,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
        )
    except (ConversionInputError, VPPFormatError) as err:
        return report_bad_input(err)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
