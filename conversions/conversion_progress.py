"""Resume state of a conversion into a LeRobotDataset: the progress file, checkpoints, roll-back after a kill and
the mark that makes an unfinished dataset refuse to load.

Resume: ``<root>/conversion_progress.json`` lists the source key of every episode saved so far (its
position is the episode index), the inputs that were skipped as bad, and whether the run finalized.
A second run with the same arguments appends only what is missing. An exception or Ctrl-C still finalizes
what was saved. A run killed outright (SIGKILL, out of memory, power loss) leaves open parquet files without
footers, so the writer checkpoints: at the start of a run and every ``checkpoint_every`` saved episodes it
finalizes the dataset (every file complete), records the files of ``data/ videos/ meta/`` with their sizes and
copies the files LeRobot rewrites in place (``meta/info.json``, ``stats.json``, ``tasks.parquet``) into
``<root>/.conversion_checkpoint/``, then resumes writing (LeRobot's resume starts new data/video files). The next
run after such a kill rolls back to the last checkpoint (deletes the newer files, restores the copies) and
redoes the episodes after it, giving the same episodes, frames and stats as an uninterrupted run. The dataset
is complete only when ``conversion_progress.json`` says ``"finalized": true``.

Until then it is visibly incomplete: while a run writes, and after a run that stopped (bad input without
``--skip_bad=true``, an error, Ctrl-C, a kill), ``meta/info.json`` carries a ``codebase_version`` that starts with
``INCOMPLETE`` and says why, so ``LeRobotDataset(...)`` (and ``lerobot-train``) refuses it with that one line
instead of loading part of the data as if it were all of it. The progress file then records ``planned`` and
``written`` episodes and the ``error``; the next run of the same command continues from the episodes written.
"""

import json
import logging
import os
import shutil
from pathlib import Path

from .conversion_errors import ConversionInputError

logger = logging.getLogger(__name__)

PROGRESS_FILE = "conversion_progress.json"
CHECKPOINT_DIR = ".conversion_checkpoint"
LEROBOT_DIRS = ("data", "videos", "meta", "images")  # what LeRobot writes under root (rolled back on resume)
REWRITTEN_IN_PLACE = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet")
# meta/info.json's codebase_version while the dataset is not complete: LeRobot cannot parse it as a version and
# refuses to load the dataset, printing it ("Invalid version: 'INCOMPLETE dataset: ...'").
INCOMPLETE_MARK = "INCOMPLETE dataset"
WRITING = "a lerobot-defi-convert run is writing it, or was stopped or killed before it finished"


def load_progress(root: Path) -> dict | None:
    path = root / PROGRESS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_progress(root: Path, progress: dict) -> None:
    tmp = root / (PROGRESS_FILE + ".partial")
    tmp.write_text(json.dumps(progress, indent=1))
    os.replace(tmp, root / PROGRESS_FILE)


def lerobot_files(root: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file LeRobot wrote under root."""
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for folder in LEROBOT_DIRS
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def incomplete_version(reason: str) -> str:
    return (
        f"{INCOMPLETE_MARK}: {reason}; see {PROGRESS_FILE} in this folder, then run the same "
        "lerobot-defi-convert command again to complete it"
    )


def mark_incomplete(dataset, reason: str) -> None:
    """Make ``meta/info.json`` say the dataset is incomplete (LeRobot then refuses to load it, with ``reason``);
    LeRobot keeps the mark whenever it rewrites the file during the run."""
    from lerobot.datasets.io_utils import write_info

    dataset.meta.info.codebase_version = incomplete_version(reason)
    write_info(dataset.meta.info, dataset.meta.root)


def mark_complete(dataset) -> None:
    from lerobot.datasets.dataset_metadata import CODEBASE_VERSION
    from lerobot.datasets.io_utils import write_info

    dataset.meta.info.codebase_version = CODEBASE_VERSION
    write_info(dataset.meta.info, dataset.meta.root)


def unmark_for_resume(root: Path) -> None:
    """Give ``meta/info.json`` LeRobot's version back so ``LeRobotDataset.resume`` opens the dataset to append."""
    from lerobot.datasets.dataset_metadata import CODEBASE_VERSION
    from lerobot.datasets.io_utils import load_info, write_info

    info = load_info(root)
    if info.codebase_version.startswith(INCOMPLETE_MARK):
        info.codebase_version = CODEBASE_VERSION
        write_info(info, root)


def write_checkpoint(root: Path, progress: dict) -> None:
    """Record the finalized dataset at root as the state a killed run rolls back to (see the module docstring)."""
    name = f"{len(progress['episodes']):09d}"
    snapshot = root / CHECKPOINT_DIR / name
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    for relative in REWRITTEN_IN_PLACE:
        if (root / relative).is_file():
            shutil.copyfile(root / relative, snapshot / Path(relative).name)
    files = lerobot_files(root)
    progress["checkpoint"] = {
        "dir": name,
        "episodes": len(progress["episodes"]),
        "bad": dict(progress["bad"]),
        "skipped": dict(progress["skipped"]),
        "files": {k: v for k, v in files.items() if k not in REWRITTEN_IN_PLACE},
    }
    save_progress(root, progress)
    for old in (root / CHECKPOINT_DIR).iterdir():
        if old.name != name:
            shutil.rmtree(old)


def roll_back_to_checkpoint(root: Path, progress: dict) -> dict | None:
    """Undo what a killed run wrote after its last checkpoint; returns the progress to resume from, or ``None``
    when nothing was checkpointed with episodes (the caller starts the dataset afresh)."""
    checkpoint = progress.get("checkpoint")
    if not checkpoint or checkpoint["episodes"] == 0:
        for folder in (*LEROBOT_DIRS, CHECKPOINT_DIR):
            shutil.rmtree(root / folder, ignore_errors=True)
        return None
    snapshot = root / CHECKPOINT_DIR / checkpoint["dir"]
    present = lerobot_files(root)
    damaged = [k for k, size in checkpoint["files"].items() if present.get(k) != size]
    if damaged or not snapshot.is_dir():
        raise ConversionInputError(
            f"{root}: cannot roll back to the last checkpoint ({len(damaged)} of its files changed or are missing, "
            f"e.g. {damaged[:3]}; snapshot {snapshot} {'present' if snapshot.is_dir() else 'missing'}); delete the "
            "folder or pass --overwrite=true"
        )
    for relative in present:
        if relative not in checkpoint["files"]:
            (root / relative).unlink()
    for relative in REWRITTEN_IN_PLACE:
        if (snapshot / Path(relative).name).is_file():
            shutil.copyfile(snapshot / Path(relative).name, root / relative)
    for folder in LEROBOT_DIRS:  # drop the folders the deleted files leave empty
        for path in sorted((root / folder).rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    if progress.get("error") and checkpoint["episodes"] == len(progress["episodes"]):
        logger.info(
            "%s: continuing the run that stopped after %d of %d episodes (%s)",
            root,
            checkpoint["episodes"],
            progress.get("planned", 0),
            progress["error"],
        )
    else:
        logger.warning(
            "%s: the previous run was killed before finalizing; rolled back to its checkpoint at %d episodes "
            "(%d saved after it are redone)",
            root,
            checkpoint["episodes"],
            len(progress["episodes"]) - checkpoint["episodes"],
        )
    progress.update(  # still not finalized: the dataset is the checkpoint's, the run goes on from there
        episodes=progress["episodes"][: checkpoint["episodes"]],
        bad=dict(checkpoint["bad"]),
        skipped=dict(checkpoint["skipped"]),
    )
    save_progress(root, progress)
    return progress
