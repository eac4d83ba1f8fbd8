"""Process set-up of a pretraining run: the ``accelerate.Accelerator`` (one or many processes) and seeding.

Rank rules of both trainers: only the main process logs, writes model folders, cards and pushes; every process
takes part in checkpointing (accelerate writes one RNG file per process) and in collective calls.
"""

from __future__ import annotations

from pathlib import Path


def make_accelerator(
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
    log_with: str | None = None,
    project_dir: str | Path | None = None,
):
    """An ``accelerate.Accelerator`` (DDP when launched with several processes).

    Without a visible CUDA device it is told ``cpu=True``, so that ``torchrun --nproc_per_node=N`` on a CPU
    machine runs DDP over gloo (accelerate only sets up multi-process CPU training when told so).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(project_dir) if project_dir else None),
    )


def seed_process(seed: int, accelerator) -> None:
    """Seed python, numpy and torch (all devices) with ``seed + process_index`` (official: seed + rank)."""
    from accelerate.utils import set_seed

    set_seed(seed + accelerator.process_index)
