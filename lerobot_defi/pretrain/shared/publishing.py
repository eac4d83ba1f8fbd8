"""Publishing a finished model folder: written atomically, with a Hub model card, uploaded to the Hub.

* :func:`atomic_directory`: build a folder under a hidden temporary name beside its final place; it appears under
  the final name only when complete (nothing half-written is left behind as if it were complete).
* :func:`write_model_card`: ``README.md`` as a ``huggingface_hub.ModelCard`` (YAML metadata, training data,
  steps, metrics, usage, the full training config).
* :func:`push_folder_to_hub`: create the repo if needed and ``upload_folder`` (network; main process only).

Used by both pretraining trainers and by ``lerobot-defi-import-official``.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lerobot_defi.pretrain.shared.sources import DatasetSourceConfig


@contextmanager
def atomic_directory(final: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary sibling folder of ``final``; when the block succeeds it replaces ``final``, when
    it fails it is removed. ``overwrite=False``: refuse (``FileExistsError``) when ``final`` already exists."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_model_card(
    folder: str | Path,
    *,
    title: str,
    summary: str,
    datasets: Sequence[DatasetSourceConfig],
    steps: int,
    config: dict[str, Any],
    base_model: str | None = None,
    metrics: dict[str, float] | None = None,
    usage: str | None = None,
    library_name: str | None = None,
    tags: Sequence[str] = (),
):
    """Write ``<folder>/README.md``: a Hub model card (YAML metadata + datasets, steps, metrics, usage and
    the full training config). Returns the ``huggingface_hub.ModelCard``."""
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    hub_datasets = [d.repo_id for d in datasets if d.root is None]
    data = ModelCardData(
        library_name=library_name,
        tags=["lerobot", "defi", *tags],
        datasets=hub_datasets or None,
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        license="apache-2.0",
    )
    total = sum(d.weight for d in datasets)
    rows = "\n".join(
        f"| `{d.repo_id}` | {d.weight / total:.3f} | {'local: ' + str(d.root) if d.root else 'Hub'} |"
        for d in datasets
    )
    lines = [
        f"# {title}",
        "",
        summary,
        "",
        "## Training data",
        "",
        "| dataset | mixture weight | source |",
        "|---|---|---|",
        rows,
        "",
        "## Training",
        "",
        f"- optimisation steps: **{steps}**",
    ]
    if base_model:
        lines.append(f"- initialised from: `{base_model}`")
    for name, value in (metrics or {}).items():
        lines.append(f"- {name}: {value:.6g}" if isinstance(value, float) else f"- {name}: {value}")
    if usage:
        lines += ["", "## Usage", "", usage]
    lines += [
        "",
        "## Training configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(Path(folder) / "README.md")
    return card


def push_folder_to_hub(
    folder: str | Path, repo_id: str, *, private: bool | None = None, commit_message: str = "Upload model"
) -> str:
    """Create the model repo ``repo_id`` (if needed) and upload ``folder`` to it; returns the repo URL. Main
    process only."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
    )
    return commit.repo_url.url
