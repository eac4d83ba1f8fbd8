"""What ``closed_loop_calvin.py`` reports: per-task and mean success from ``lerobot-eval``'s ``eval_info.json``,
and the plot of mean success vs training steps."""

from pathlib import Path


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
