"""How many of the benchmark's tasks each held-out start allows, and what a policy without language can reach.

A task-level CALVIN start is one of CALVIN's initial conditions, drawn among those where the asked task can be done
(``lerobot_defi/envs/calvin_task_starts.py``). Often several of the benchmark's tasks can be done from the same start
(``open_drawer`` and ``turn_on_led`` when the drawer is closed and the LED off). A policy that does not read the
instruction (LeRobot's diffusion policy and ACT) sees only the scene; trained on as many demonstrations of each task,
it can at best do one of the ``k`` possible tasks, an expected success of ``1 / k`` on such a start. For every
evaluation in a ``closed_loop_calvin.py`` output folder this prints the successes split by ``k`` and that ceiling
(the mean of ``1 / k`` over the starts).

The starts are drawn again from their seeds as ``lerobot-eval`` (LeRobot 0.6.1) seeds them: episode ``i`` of every
task starts from seed ``eval_seed + i`` (batch ``b`` of ``n`` environments gets seeds ``eval_seed + b * n + j``).

    python benchmarks/start_ambiguity.py --output_dir=benchmarks/results/gpu_closed_loop_part1_2026-12-07
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.envs.calvin_task_starts import draw_task_start, task_can_start


@dataclass
class StartAmbiguityConfig:
    # A closed_loop_calvin.py output folder: benchmark_config.json and eval/<policy>_<step>/eval_info.json.
    output_dir: str
    # Also write the numbers as JSON here.
    out: str | None = None


def possible_tasks(condition: dict, tasks: list[str]) -> list[str]:
    """The tasks of ``tasks`` that can be done from the initial ``condition``."""
    return [task for task in tasks if task_can_start(task, condition)]


def start_ambiguity(eval_info: dict, tasks: list[str], eval_seed: int) -> dict:
    """Successes of one ``lerobot-eval`` ``eval_info.json`` by the number ``k`` of ``tasks`` their start allows.

    Returns ``{"by_possible_tasks": {k: {"successes": s, "episodes": n}}, "episodes": N, "success": s / N,
    "language_blind_ceiling": mean of 1 / k}``.
    """
    by_k: dict[int, dict[str, int]] = {}
    inverse_k = []
    for entry in eval_info["per_task"]:
        task = str(entry["task_id"])
        if task not in tasks:
            raise ValueError(f"eval_info task {task!r} is not one of the benchmark's tasks {tasks}")
        for episode, success in enumerate(entry["metrics"]["successes"]):
            condition = draw_task_start(task, eval_seed + episode, purpose="evaluate").condition
            k = len(possible_tasks(condition, tasks))
            counts = by_k.setdefault(k, {"successes": 0, "episodes": 0})
            counts["successes"] += int(bool(success))
            counts["episodes"] += 1
            inverse_k.append(1.0 / k)
    episodes = len(inverse_k)
    successes = sum(counts["successes"] for counts in by_k.values())
    return {
        "by_possible_tasks": dict(sorted(by_k.items())),
        "episodes": episodes,
        "success": successes / episodes if episodes else None,
        "language_blind_ceiling": sum(inverse_k) / episodes if episodes else None,
    }


def analyse_output_dir(output_dir: str | Path) -> dict[str, dict]:
    """:func:`start_ambiguity` of every evaluation in a benchmark output folder, keyed by its folder name."""
    output_dir = Path(output_dir)
    config_path = output_dir / "benchmark_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found (expected a closed_loop_calvin.py output folder)")
    config = json.loads(config_path.read_text())
    evaluations = sorted((output_dir / "eval").glob("*/eval_info.json"))
    if not evaluations:
        raise FileNotFoundError(f"no {output_dir / 'eval'}/<policy>_<step>/eval_info.json found")
    return {
        path.parent.name: start_ambiguity(json.loads(path.read_text()), config["tasks"], config["eval_seed"])
        for path in evaluations
    }


def main() -> None:
    config = parse_or_exit(StartAmbiguityConfig)
    results = analyse_output_dir(config.output_dir)
    widths = sorted({k for result in results.values() for k in result["by_possible_tasks"]})
    print(
        f"{'evaluation':32s} success  " + "  ".join(f"k={k}: successes" for k in widths) + "  blind ceiling"
    )
    for name, result in results.items():
        cells = []
        for k in widths:
            counts = result["by_possible_tasks"].get(k, {"successes": 0, "episodes": 0})
            cells.append(f"{counts['successes']:>5d} / {counts['episodes']:<6d}")
        print(
            f"{name:32s} {result['success']:7.1%}  " + "  ".join(cells)
            + f"  {result['language_blind_ceiling']:.1%}"
        )  # fmt: skip
    if config.out:
        Path(config.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
