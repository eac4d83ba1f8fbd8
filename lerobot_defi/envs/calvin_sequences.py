"""The evaluation sequences of CALVIN's long-horizon benchmark.

A sequence is an initial condition of the scene plus five task names to be solved one after the
other. The 1000 standard sequences (CALVIN's generator, seed 0) ship with this package as
``calvin_eval_sequences_1000.json``: a JSON list of ``[initial_condition, [task, ...]]`` pairs.
Another file in the same format can be given instead (``sequences_file``).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from lerobot_defi.envs.calvin_initial_state import CONDITION_KEYS

STANDARD_SEQUENCES_FILE = Path(__file__).resolve().parent / "calvin_eval_sequences_1000.json"
NUM_STANDARD_SEQUENCES = 1000
SUBTASKS_PER_SEQUENCE = 5


@dataclass(frozen=True)
class CalvinSequence:
    """One evaluation sequence: the scene's initial condition and the task names to chain."""

    initial_condition: dict
    tasks: tuple[str, ...]


def load_sequences(path: str | Path | None = None) -> list[CalvinSequence]:
    """Sequences from ``path`` (default: the 1000 standard ones), checked for the expected layout."""
    path = Path(path) if path is not None else STANDARD_SEQUENCES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CALVIN evaluation sequences file not found: {path}")
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON list of [initial_condition, [task, ...]] pairs")
    sequences = []
    for index, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], dict)):
            raise ValueError(
                f"{path}: entry {index} is not an [initial_condition, [task, ...]] pair: {entry!r}"
            )
        condition, tasks = entry
        missing = [key for key in CONDITION_KEYS if key not in condition]
        if missing:
            raise ValueError(f"{path}: the initial condition of entry {index} lacks the keys {missing}")
        if not (isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)):
            raise ValueError(f"{path}: entry {index} needs a non-empty list of task names, got {tasks!r}")
        sequences.append(CalvinSequence(initial_condition=dict(condition), tasks=tuple(tasks)))
    return sequences
