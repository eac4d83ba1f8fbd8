"""The metrics of CALVIN's long-horizon benchmark, from per-sequence results.

A sequence's result is the number of its tasks solved in a row (0..5). The benchmark reports the
success rate of 1..5 chained tasks (the share of sequences with at least i solved), the average
length (mean number solved, at most 5), and per task how often it was solved when it was attempted
(a task is attempted when every task before it in its sequence was solved).
"""

from collections import Counter
from collections.abc import Sequence


def chain_success_rates(completed: Sequence[int], chain_length: int = 5) -> list[float]:
    """``[rate of >= 1 solved, ..., rate of >= chain_length solved]`` over the sequences."""
    if not completed:
        raise ValueError("no sequence results to aggregate")
    n = len(completed)
    return [sum(c >= i for c in completed) / n for i in range(1, chain_length + 1)]


def average_length(completed: Sequence[int]) -> float:
    """Mean number of tasks solved in a row per sequence (CALVIN's headline metric)."""
    if not completed:
        raise ValueError("no sequence results to aggregate")
    return sum(completed) / len(completed)


def per_task_success(tasks: Sequence[Sequence[str]], completed: Sequence[int]) -> dict[str, dict]:
    """``{task: {"success", "attempts", "rate"}}`` counting each attempted task of each sequence."""
    if len(tasks) != len(completed):
        raise ValueError(f"{len(tasks)} task lists for {len(completed)} results")
    successes, attempts = Counter(), Counter()
    for sequence_tasks, n_solved in zip(tasks, completed, strict=True):
        for position, task in enumerate(sequence_tasks):
            if position > n_solved:
                break
            attempts[task] += 1
            successes[task] += position < n_solved
    return {
        task: {
            "success": successes[task],
            "attempts": attempts[task],
            "rate": successes[task] / attempts[task],
        }
        for task in sorted(attempts)
    }


def summarize(tasks: Sequence[Sequence[str]], completed: Sequence[int]) -> dict:
    """All benchmark metrics as a JSON-ready dict."""
    rates = chain_success_rates(completed)
    return {
        "num_sequences": len(completed),
        "average_length": average_length(completed),
        "chain_success_rates": {str(i + 1): rate for i, rate in enumerate(rates)},
        "per_task": per_task_success(tasks, completed),
    }


def format_summary(summary: dict) -> str:
    """A human-readable table of ``summarize``'s output."""
    lines = [
        f"CALVIN long-horizon evaluation over {summary['num_sequences']} sequences",
        f"Average length: {summary['average_length']:.3f}",
        "Tasks completed in a row: "
        + "  ".join(f"{i}: {rate * 100:.1f}%" for i, rate in summary["chain_success_rates"].items()),
        "Per task (solved / attempted):",
    ]
    width = max((len(task) for task in summary["per_task"]), default=0)
    for task, entry in sorted(summary["per_task"].items(), key=lambda item: (-item[1]["rate"], item[0])):
        lines.append(
            f"  {task:<{width}}  {entry['success']:>4} / {entry['attempts']:<4}  {entry['rate'] * 100:5.1f}%"
        )
    return "\n".join(lines)
