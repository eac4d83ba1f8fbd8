"""The training log a person reads: ``<output_dir>/metrics.jsonl``, one JSON object per line (``{"step": ...,
<name>: value, ...}``), written by the main process, plus the accelerate trackers (``--report_to``) when any."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only JSON-lines metrics file written by the main process, plus accelerate trackers when the
    accelerator has any."""

    def __init__(self, path: str | Path, accelerator):
        self.path = Path(path)
        self.accelerator = accelerator

    def log(self, step: int, **metrics: float) -> None:
        if self.accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log(metrics, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


def read_last_metrics(path: str | Path) -> dict[str, float]:
    """The latest value of every metric in a metrics.jsonl file (``step`` left out)."""
    path = Path(path)
    last: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            last.update(json.loads(line))
    last.pop("step", None)
    return last
