"""Resumable training checkpoints: ``<output_dir>/checkpoints/<step>/`` holds the prepared model(s),
optimizer(s), scheduler(s), grad scaler and every process's RNG states (``accelerator.save_state``) plus
``training_state.json`` (``step`` and what the trainer adds); ``checkpoints/last`` links the newest.

A checkpoint folder appears under its final name only when complete. Saving and restoring are collective: every
process calls them (accelerate writes one RNG file per process).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT_LINK = "last"
TRAINING_STATE_FILE = "training_state.json"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"{step:09d}"


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    extra: dict[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Save the prepared model(s), optimizer(s), scheduler(s), grad scaler, every process's RNG states and
    ``{"step": step, **extra}`` to ``<output_dir>/checkpoints/<step>/``; update ``checkpoints/last``.

    Collective: call it on every process. The folder appears under its final name only when complete.
    ``keep_last``: delete older checkpoints beyond this many (None: keep all).
    """
    final = checkpoint_dir(output_dir, step)
    staging = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "num_processes": accelerator.num_processes, **(extra or {})}
        (staging / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        link = final.parent / LAST_CHECKPOINT_LINK
        tmp_link = final.parent / f".{LAST_CHECKPOINT_LINK}.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(final.name)
        os.replace(tmp_link, link)
        if keep_last is not None:
            done = sorted(p for p in final.parent.iterdir() if p.name.isdigit() and p.is_dir())
            for old in done[: max(0, len(done) - keep_last)]:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of ``output_dir`` (None if there is none)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.isdigit() and (p / TRAINING_STATE_FILE).is_file())
    return done[-1] if done else None


def restore_checkpoint(accelerator, checkpoint: str | Path) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` saved (the objects must already be ``accelerator.prepare``-d);
    returns the training state dict (``step`` and the ``extra`` keys)."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / TRAINING_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a complete training checkpoint (no {TRAINING_STATE_FILE}); "
            f"checkpoints are written by save_checkpoint under <output_dir>/{CHECKPOINTS_DIR}/<step>/"
        )
    state = json.loads(state_file.read_text())
    saved_processes = state.get("num_processes", 1)
    if saved_processes != accelerator.num_processes:
        logger.warning(
            "checkpoint %s was written by %d process(es), resuming with %d: the data order and RNG streams "
            "continue differently than in an uninterrupted run",
            checkpoint,
            saved_processes,
            accelerator.num_processes,
        )
    accelerator.load_state(str(checkpoint))
    return state


def checkpoint_to_resume(output_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from: the newest one with ``resume``, None for a fresh run. Refuses a fresh
    run over existing checkpoints and a resume without any."""
    latest = latest_checkpoint(output_dir)
    if resume and latest is None:
        raise FileNotFoundError(
            f"--resume: no complete checkpoint under {Path(output_dir) / CHECKPOINTS_DIR}"
        )
    if not resume and latest is not None:
        raise FileExistsError(
            f"{output_dir} already holds training checkpoints: pass --resume=true to continue that run or choose "
            "another --output_dir"
        )
    return latest if resume else None
