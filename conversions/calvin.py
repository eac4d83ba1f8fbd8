"""``lerobot-defi-convert calvin``: a CALVIN dataset (``task_ABC_D``, ``task_D_D``, ``calvin_debug_dataset``)
-> LeRobotDataset v3.

Input: a split folder (``training/`` or ``validation/``: ``episode_XXXXXXX.npz`` per frame,
``ep_start_end_ids.npy``, ``lang_annotations/auto_lang_ann.npy``, ``scene_info.npy``, ``statistics.yaml``,
``.hydra/merged_config.yaml``), or the dataset folder holding both splits (``--split`` picks).

Output features:

* ``observation.images.static`` (200x200x3) and ``observation.images.gripper`` (84x84x3) as videos;
* ``observation.state`` = ``robot_obs`` (15,), ``observation.environment_state`` = ``scene_obs`` (24,);
* ``action`` = ``rel_actions`` (7,) (``--absolute_actions=true``: ``actions``, the next TCP pose + gripper);
* ``task`` = the instruction sentence;
* ``calvin_scene`` (0..3 = scene A..D from ``scene_info.npy``; ``--scene`` for frames it does not cover, else
  -1), ``calvin_split`` (0 training, 1 validation) and ``calvin_frame`` (CALVIN's global frame index), per
  frame; policies ignore these keys;
* opt-in: ``depth_static`` (200x200) / ``depth_gripper`` (84x84) float32 (``--depth=true``), ``tactile_rgb``
  (160x120x6) / ``tactile_depth`` (160x120x2) (``--tactile=true``, when the release has them).

Layouts:

* ``windows`` (default; what DeFI trains on): each language-annotated window is one episode carrying its
  instruction. A window ``(start, end)`` covers frames ``start .. end-1`` as CALVIN's annotator writes them
  (``--window_end=inclusive`` adds frame ``end``, as the original training code reads one frame more).
* ``play`` (video pretraining): each continuous play segment of ``ep_start_end_ids.npy`` is cut into
  episodes of at most ``--max_episode_frames`` frames (memory stays flat); every frame carries the instruction
  of the latest-starting window that contains it, else ``--default_task``.

``meta/calvin_episodes.json`` lists per episode its split, scene, CALVIN frame range and instruction (select
ABC->D with ``calvin_scene``); ``meta/calvin_statistics/<split>.yaml`` keeps CALVIN's own statistics (LeRobot's
stats are recomputed from the data). Resume, ``--skip_bad=true``, parallel reading and
``--push_to_hub=true`` come from ``episode_writer``.

Example (the full ABC->D training split)::

    lerobot-defi-convert calvin --raw_dir=/data/calvin/task_ABC_D --split=training \\
        --repo_id=me/calvin_abc_windows --num_workers=2
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from lerobot_defi.command_line import CommandLineError, parse_command_line

from .calvin_format import (
    LAYOUTS,
    SCENE_LETTERS,
    SPLITS,
    WINDOW_ENDS,
    CalvinFormatError,
    EpisodeSpec,
    ReadOptions,
    features,
    plan_episodes,
    read_episode,
    read_fps,
    split_folders,
)
from .conversion_errors import ConversionInputError, report_bad_input
from .episode_writer import (
    WRITER_VIDEO_BACKEND,
    ConversionOutputConfig,
    default_root,
    write_episodes,
)

CONVERSION_OPTIONS_FILE = "calvin_conversion.json"


def convert_calvin(
    raw_dir: str | Path,
    repo_id: str,
    root: str | Path | None = None,
    *,
    layout: str = "windows",
    split: str = "training",
    absolute_actions: bool = False,
    depth: bool = False,
    tactile: bool = False,
    window_end: str = "exclusive",
    default_task: str = "play",
    max_episode_frames: int = 2048,
    scene: str | None = None,
    max_episodes: int | None = None,
    fps: int | None = None,
    num_workers: int = 0,
    skip_bad: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 200,
    video_file_size_mb: int = 20,
    push_to_hub: bool = False,
    private: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a CALVIN split (or dataset) folder; returns the LeRobotDataset root. See the module docstring."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'windows' or 'play', got {layout!r}")
    if scene is not None and scene not in tuple(SCENE_LETTERS):
        raise ValueError(f"scene must be one of {list(SCENE_LETTERS)}, got {scene!r}")
    default_scene = SCENE_LETTERS.index(scene) if scene is not None else -1
    raw_dir = Path(raw_dir)
    root = Path(root) if root is not None else default_root(repo_id)
    folders = split_folders(raw_dir, split)
    planned = [
        item
        for name, folder in folders
        for item in plan_episodes(
            name, folder, layout, window_end, default_task, max_episode_frames, default_scene
        )
    ]
    items = planned[:max_episodes] if max_episodes is not None else planned
    if not items:
        raise CalvinFormatError(
            f"{raw_dir}: nothing to convert (no {'language windows' if layout == 'windows' else 'play segments'})"
        )
    options = ReadOptions(absolute_actions=absolute_actions, depth=depth, tactile=tactile)
    conversion = {
        "raw_dir": str(raw_dir.resolve()),
        "splits": [name for name, _ in folders],
        "layout": layout,
        "window_end": window_end,
        "default_task": default_task,
        "max_episode_frames": max_episode_frames,
        "scene": scene,
        **vars(options),
    }
    options_file = root / "meta" / CONVERSION_OPTIONS_FILE
    if not overwrite and options_file.is_file():
        previous = json.loads(options_file.read_text())
        changed = {
            k: (previous.get(k), v) for k, v in conversion.items() if previous.get(k) != v and k != "raw_dir"
        }
        if changed:
            listed = ", ".join(f"{k}: {then!r} then, {now!r} now" for k, (then, now) in changed.items())
            raise CalvinFormatError(
                f"{root} was converted with other options ({listed}); resuming would mix them: use another "
                "--root or pass --overwrite=true"
            )
    report = write_episodes(
        repo_id=repo_id,
        root=root,
        fps=fps or read_fps(folders[0][1]),
        features=features(options),
        items=items,
        read_episode=functools.partial(read_episode, options),
        bad_input_errors=(CalvinFormatError,),
        robot_type="franka_calvin",
        num_workers=num_workers,
        skip_bad=skip_bad,
        overwrite=overwrite,
        checkpoint_every=checkpoint_every,
        video_files_size_in_mb=video_file_size_mb,
        push_to_hub=False,
        progress=progress,
        description=f"calvin {layout}",
    )
    _write_calvin_meta(root, folders, planned)
    options_file.write_text(json.dumps(conversion, indent=1))
    if push_to_hub:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        LeRobotDataset(repo_id, root=root, video_backend=WRITER_VIDEO_BACKEND).push_to_hub(private=private)
    if report.bad:
        print(report.summary(), file=sys.stderr)
    return root


def _write_calvin_meta(
    root: Path, folders: list[tuple[str, Path]], items: list[tuple[str, EpisodeSpec]]
) -> None:
    """``meta/calvin_episodes.json`` (episode -> split, scene, frames, instruction) and CALVIN's statistics."""
    import shutil

    specs = dict(items)
    progress = json.loads((root / "conversion_progress.json").read_text())
    episodes = []
    for index, key in enumerate(progress["episodes"]):
        spec = specs.get(key)
        if spec is None:
            continue
        episodes.append(
            {
                "episode_index": index,
                "source": key,
                "split": SPLITS[spec.split],
                "scene": SCENE_LETTERS[spec.scene] if spec.scene >= 0 else None,
                "calvin_frames": [spec.first, spec.last],
                "tasks": list(dict.fromkeys(spec.tasks)),  # distinct instructions, in frame order
            }
        )
    (root / "meta" / "calvin_episodes.json").write_text(json.dumps(episodes, indent=1))
    statistics_dir = root / "meta" / "calvin_statistics"
    for name, folder in folders:
        if (folder / "statistics.yaml").is_file():
            statistics_dir.mkdir(exist_ok=True)
            shutil.copy(folder / "statistics.yaml", statistics_dir / f"{name}.yaml")


@dataclass(kw_only=True)
class CalvinConvertConfig(ConversionOutputConfig):
    """lerobot-defi-convert calvin: a CALVIN dataset or split folder -> LeRobotDataset v3 (see the module docstring
    of lerobot_defi.conversions.calvin). Example:
    lerobot-defi-convert calvin --raw_dir=/data/calvin/task_ABC_D --split=training --repo_id=me/calvin_abc"""

    # CALVIN dataset folder (with training/ and validation/) or split folder.
    raw_dir: Path
    # "windows": one episode per language window (what DeFI trains on); "play": play segments (video pretraining).
    layout: str = "windows"
    # Split of a dataset folder: training, validation or all.
    split: str = "training"
    # Actions = the next TCP pose + gripper (CALVIN's `actions`) instead of the relative `rel_actions`.
    absolute_actions: bool = False
    # Also store depth_static / depth_gripper.
    depth: bool = False
    # Also store the tactile arrays.
    tactile: bool = False
    # "exclusive": a window (start, end) is frames start .. end-1; "inclusive" adds frame end (original training).
    window_end: str = "exclusive"
    # Instruction of play frames outside every window.
    default_task: str = "play"
    # Play layout: frames per episode.
    max_episode_frames: int = 2048
    # Scene (A, B, C or D) of the frames scene_info.npy does not cover (or when the split has none).
    scene: str | None = None
    # Frame rate (default: control_freq of .hydra/merged_config.yaml, else 30).
    fps: int | None = None
    # Episodes between checkpoints a killed run resumes from (each starts new data/video files).
    checkpoint_every: int = 200
    # Video file size (MB) at which LeRobot starts a new file (it rewrites the current file per episode).
    video_file_size_mb: int = 20
    # Reader processes decoding the npz frames while the main process encodes video (0: read in the main process).
    num_workers: int = 2

    def __post_init__(self):
        for name, value, allowed in (
            ("layout", self.layout, LAYOUTS),
            ("split", self.split, (*SPLITS, "all")),
            ("window_end", self.window_end, WINDOW_ENDS),
            ("scene", self.scene, (*SCENE_LETTERS, None)),
        ):
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {list(allowed)}, got {value!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_command_line(CalvinConvertConfig, argv, prog="lerobot-defi-convert calvin")
        root = convert_calvin(
            cfg.raw_dir, cfg.repo_id, cfg.root, layout=cfg.layout, split=cfg.split,
            absolute_actions=cfg.absolute_actions, depth=cfg.depth, tactile=cfg.tactile, window_end=cfg.window_end,
            default_task=cfg.default_task, max_episode_frames=cfg.max_episode_frames, scene=cfg.scene,
            max_episodes=cfg.max_episodes, fps=cfg.fps, num_workers=cfg.num_workers, skip_bad=cfg.skip_bad,
            overwrite=cfg.overwrite, checkpoint_every=cfg.checkpoint_every,
            video_file_size_mb=cfg.video_file_size_mb, push_to_hub=cfg.push_to_hub, private=cfg.private,
        )  # fmt: skip
    except (CommandLineError, ConversionInputError) as err:
        return report_bad_input(err)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
