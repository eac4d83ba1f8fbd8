"""What ``closed_loop_calvin.py`` reports: per-task and mean success from ``lerobot-eval``'s ``eval_info.json``,
the machine it ran on, the merge of parts run on different machines, and the plot of mean success vs training
steps."""

import json
import os
import platform
from pathlib import Path

# Benchmark settings that must agree for results of separate runs to be one table: the data, the training budget
# and the evaluation protocol (not the machine, the output folder or the degree of parallelism).
COMPARABLE_SETTINGS = (
    "tasks", "size", "episodes_per_task", "camera_size", "renderer", "perturbation_probability", "record_seed",
    "steps", "batch_size", "curve_points", "seed", "drop_n_last_frames", "warmup_fraction", "pretrain_steps",
    "eval_episodes_per_task", "curve_episodes_per_task", "episode_length", "instructions", "eval_seed",
)  # fmt: skip


class IncompatibleResultsError(ValueError):
    """Results of separate runs that cannot be merged into one table."""


def machine_description(device: str) -> str:
    """The accelerator (or the CPU) the benchmark trained on, e.g. ``"NVIDIA H100 80GB HBM3 (16 CPU cores)"``."""
    cores = f"{os.cpu_count()} CPU cores"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} ({cores})"
    return f"{platform.machine()} CPU ({cores})"


def merge_results(parts: list[dict]) -> dict:
    """One results dict from the ``results.json`` of runs made separately (e.g. one part per session on different
    machines): every part's policies, each keeping the machine it ran on. Refuses parts whose comparable settings
    (:data:`COMPARABLE_SETTINGS`) or datasets differ, and a policy that two parts both evaluated."""
    if not parts:
        raise IncompatibleResultsError("nothing to merge")
    first = parts[0]
    merged = {
        "config": {key: first["config"][key] for key in COMPARABLE_SETTINGS},
        "parts": [],
        "policies": {},
        "failed_stages": {},
    }
    dataset = next((part["dataset"] for part in parts if "dataset" in part), None)
    if dataset is not None:
        merged["dataset"] = dataset
    for index, part in enumerate(parts):
        differ = [key for key in COMPARABLE_SETTINGS if part["config"].get(key) != merged["config"][key]]
        if differ:
            raise IncompatibleResultsError(
                f"part {index} ({part['config'].get('output_dir')}) differs in {differ} from part 0: "
                "not the same benchmark"
            )
        if dataset is not None and "dataset" in part:
            same = all(part["dataset"].get(k) == dataset.get(k) for k in ("episodes", "frames", "expert"))
            if not same:
                raise IncompatibleResultsError(f"part {index} was recorded on another dataset than part 0")
        evaluated = [name for name, entry in part["policies"].items() if entry.get("evaluations")]
        twice = sorted(set(evaluated) & {n for n, e in merged["policies"].items() if e.get("evaluations")})
        if twice:
            raise IncompatibleResultsError(f"policies {twice} are evaluated in more than one part")
        machine = part.get("machine")
        merged["parts"].append(
            {"output_dir": part["config"].get("output_dir"), "machine": machine, "policies": evaluated}
        )
        for name, entry in part["policies"].items():
            if entry.get("evaluations") or name not in merged["policies"]:
                merged["policies"][name] = {**entry, "machine": entry.get("machine", machine)}
        merged["failed_stages"].update(part.get("failed_stages", {}))
    return merged


def load_results(path: str | Path) -> dict:
    """A ``results.json`` (or the benchmark output folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json of benchmarks/closed_loop_calvin.py")
    return json.loads(path.read_text())


def summarize_eval(info: dict) -> dict:
    """Per-task and mean success of a ``lerobot-eval`` ``eval_info.json`` (task-level CALVIN mode)."""
    per_task = {}
    for entry in info["per_task"]:
        successes = entry["metrics"]["successes"]
        per_task[str(entry["task_id"])] = {
            "success_rate": sum(successes) / len(successes),
            "episodes": len(successes),
        }
    rates = [v["success_rate"] for v in per_task.values()]
    return {
        "mean_success": sum(rates) / len(rates) if rates else None,
        "episodes_per_task": min((v["episodes"] for v in per_task.values()), default=0),
        "per_task": per_task,
        "eval_seconds": info.get("overall", {}).get("eval_s"),
    }


def plot_results(results: dict, path: Path) -> None:
    """Mean success over tasks vs training steps, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for policy, entry in results["policies"].items():
        points = [(e["step"], e["mean_success"], e["episodes_per_task"]) for e in entry["evaluations"]]
        if not points:
            continue
        steps, success, _ = zip(*points, strict=True)
        axis.plot(steps, [100 * s for s in success], marker="o", label=policy)
        for x, y, n in points:
            axis.annotate(f"n={n}", (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xlabel(f"training steps (batch {results['config']['batch_size']})")
    axis.set_ylabel("mean success over tasks (%)")
    axis.set_ylim(-2, 102)
    axis.set_title(
        f"CALVIN, {len(results['config']['tasks'])} tasks, held-out starts (n = episodes per task)"
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
