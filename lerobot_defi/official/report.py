"""What an import writes besides the model: the atomic output folder, the import report, and the messages that
say what the key map used, skipped, could not use and could not fill."""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lerobot_defi.official.checkpoints import OfficialCheckpointError
from lerobot_defi.official.keymap import KeyMap, KeyMapResult
from lerobot_defi.pretrain.shared.publishing import atomic_directory

logger = logging.getLogger(__name__)

REPORT_FILE = "official_import_report.json"


@contextmanager
def atomic_output_dir(output: str | Path, overwrite: bool) -> Iterator[Path]:
    """A staging folder that becomes ``output`` only when the block succeeds (``atomic_directory``); an existing
    ``output`` is replaced only with ``overwrite``. On error nothing is left behind."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite=true to replace it")
    with atomic_directory(output) as staging:
        yield staging


def write_report(folder: Path, report: dict) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def missing_message(path: Path, result: KeyMapResult, keymap: KeyMap, what: str, hint: str) -> str:
    lines = [f"{path}: cannot build {what}; refusing to write it."]
    if result.shape_mismatches:
        lines.append(f"{len(result.shape_mismatches)} official tensor(s) with another shape than ours:")
        lines += [f"  {line}" for line in result.shape_mismatch_lines()[:30]]
    absent = result.absent()
    if absent:
        lines.append(f"{len(absent)} tensor(s) of ours not filled by the checkpoint:")
        entries = []
        for source, target in keymap.subtrees:  # a whole frozen model absent: one line
            names = [n for n in absent if n.startswith(target)]
            if names:
                entries.append(f"{target}* ({len(names)} tensors: official {source}* is absent)")
                absent = [n for n in absent if not n.startswith(target)]
        for name in absent:
            official = keymap.official(name)
            entries.append(
                f"{name} (official {official} is missing)" if official else f"{name} (no official name)"
            )
        lines += [f"  {entry}" for entry in entries[:30]]
        if len(entries) > 30:
            lines.append(f"  ... and {len(entries) - 30} more")
    lines.append(hint)
    return "\n".join(lines)


def check_unused(path: Path, result: KeyMapResult, strict: bool) -> None:
    if not result.unused:
        return
    lines = [f"  {name}: {why}" for name, why in list(result.unused.items())[:30]]
    message = f"{path}: {len(result.unused)} official tensor(s) not used:\n" + "\n".join(lines)
    if strict:
        raise OfficialCheckpointError(message + "\n(--strict=true refuses unused official tensors)")
    logger.warning(message)


def log_result(what: str, result: KeyMapResult) -> None:
    summary = result.summary()
    kinds: dict[str, int] = {}  # "dead", "redundant", ...: the word before the reason's colon
    for reason, count in summary["skipped_tensors_by_reason"].items():
        kind = reason.split(":")[0] if ":" in reason else reason
        kinds[kind] = kinds.get(kind, 0) + count
    logger.info(
        "%s: %d tensors (%.1f M values) imported; knowingly skipped: %s (reasons in %s); %d official tensors unused",
        what,
        summary["mapped_tensors"],
        summary["mapped_values"] / 1e6,
        ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none",
        REPORT_FILE,
        len(result.unused),
    )
