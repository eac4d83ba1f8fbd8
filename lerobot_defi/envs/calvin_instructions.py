"""The language instruction a policy receives for each CALVIN task during evaluation.

CALVIN's evaluation gives, for each of its 34 tasks, the first sentence of the validation
annotations (sentences never seen in training); the other sources are each task's first training sentence and the
sentence a LeRobotDataset's own episodes use most (:func:`dataset_instructions`). They are read from a CALVIN dataset's validation
split (``<split>/lang_annotations/embeddings.npy``: ``{task: {"ann": [sentence, ...], "emb": ...}}``)
or, without a dataset, from the copy shipped with this package
(``calvin_validation_instructions.json``, ``{task: sentence}``).
"""

import json
from pathlib import Path

import numpy as np

PACKAGED_INSTRUCTIONS_FILE = Path(__file__).resolve().parent / "calvin_validation_instructions.json"
# CALVIN's training annotation sentences, {task: [sentence, ...]} (calvin_models/conf/annotations/new_playtable.yaml).
TRAINING_INSTRUCTIONS_FILE = Path(__file__).resolve().parent / "calvin_training_instructions.json"
INSTRUCTION_SOURCES = ("evaluation", "training", "dataset")
EMBEDDINGS_FILE = Path("lang_annotations") / "embeddings.npy"


def load_instructions(dataset_dir: str | Path | None = None) -> dict[str, str]:
    """``{task_name: instruction}`` from a CALVIN validation split folder, or the packaged copy."""
    if dataset_dir is None:
        with open(PACKAGED_INSTRUCTIONS_FILE) as f:
            return dict(json.load(f))
    path = Path(dataset_dir) / EMBEDDINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --dataset_dir must be a CALVIN validation split folder "
            f"(e.g. task_ABC_D/validation) holding {EMBEDDINGS_FILE}"
        )
    annotations = np.load(path, allow_pickle=True).item()
    instructions = {}
    for task, entry in annotations.items():
        sentences = entry.get("ann") if isinstance(entry, dict) else None
        if not sentences:
            raise ValueError(f"{path}: task {task!r} has no 'ann' sentences")
        instructions[task] = str(sentences[0])
    return instructions


def training_instructions() -> dict[str, list[str]]:
    """CALVIN's training annotation sentences, ``{task: [sentence, ...]}`` (never the evaluation sentence)."""
    with open(TRAINING_INSTRUCTIONS_FILE) as f:
        return {task: list(sentences) for task, sentences in json.load(f).items()}


def instructions_for(source: str, dataset_dir: str | Path | None = None) -> dict[str, str]:
    """``{task: sentence}``: the evaluation sentences (``"evaluation"``, see :func:`load_instructions`) or the
    first training sentence of each task (``"training"``). ``"dataset"`` needs the dataset: see
    :func:`dataset_instructions`."""
    if source == "evaluation":
        return load_instructions(dataset_dir)
    if source == "training":
        return {task: sentences[0] for task, sentences in training_instructions().items()}
    if source == "dataset":
        raise ValueError("instruction source 'dataset' needs the LeRobotDataset (dataset_instructions)")
    raise ValueError(f"instruction source must be one of {INSTRUCTION_SOURCES}, got {source!r}")


def dataset_instructions(root: str | Path) -> dict[str, str]:
    """``{task: sentence}`` from the instructions a LeRobotDataset of CALVIN data was trained with: for each CALVIN
    task, its sentence (one of CALVIN's training annotations) that the most episodes of the dataset carry, ties to
    the earlier one. For policies whose text encoders cannot generalise to a sentence they never saw (random
    stand-ins): every task is then asked for with words from its own demonstrations. Sentences that are not CALVIN
    training annotations are ignored."""
    from collections import Counter

    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset folder (no meta/info.json)")
    meta = LeRobotDatasetMetadata("local/" + root.name, root=root)
    task_of = {
        sentence: task for task, sentences in training_instructions().items() for sentence in sentences
    }
    counts: dict[str, Counter] = {}
    for episode_tasks in meta.episodes["tasks"]:
        for sentence in episode_tasks:
            if sentence in task_of:
                counts.setdefault(task_of[sentence], Counter())[sentence] += 1
    return {task: counter.most_common(1)[0][0] for task, counter in sorted(counts.items())}


def check_instructions_cover(instructions: dict[str, str], tasks: set[str], source: str) -> None:
    """Raise ``KeyError`` naming the tasks that have no instruction in ``source``."""
    missing = sorted(tasks - set(instructions))
    if missing:
        raise KeyError(f"no instruction for the CALVIN tasks {missing} in {source}")
