"""How many of the benchmark's tasks a held-out start allows (benchmarks/start_ambiguity.py), on the committed GPU
results of parts 1 and 2 (the numbers docs/closed_loop_calvin.md quotes) and on constructed evaluations."""

import json
import sys

import pytest
from defi_test_utils import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
from start_ambiguity import analyse_output_dir, possible_tasks, start_ambiguity

from lerobot_defi.envs.calvin_task_starts import draw_task_start

PART1 = REPO_DIR / "benchmarks" / "results" / "gpu_closed_loop_part1_2026-12-07"
PART2 = REPO_DIR / "benchmarks" / "results" / "gpu_closed_loop_part2_2026-12-07"
FOUR_TASKS = ["open_drawer", "close_drawer", "turn_on_led", "move_slider_left"]


def _eval_info(successes_per_task: dict[str, list[bool]]) -> dict:
    return {
        "per_task": [
            {"task_group": "calvin_tasks", "task_id": task, "metrics": {"successes": successes}}
            for task, successes in successes_per_task.items()
        ]
    }


def test_possible_tasks_follow_the_symbolic_state():
    condition = {"drawer": "closed", "led": 0, "slider": "right", "lightbulb": 1}
    condition.update(red_block="table", blue_block="slider_left", pink_block="slider_right", grasped=0)
    assert possible_tasks(condition, FOUR_TASKS) == ["open_drawer", "turn_on_led", "move_slider_left"]
    condition.update(drawer="open", led=1, slider="left")
    assert possible_tasks(condition, FOUR_TASKS) == ["close_drawer"]


def test_mutually_exclusive_tasks_leave_nothing_to_guess():
    # The drawer is either closed or open: every start of these two tasks allows exactly the asked one.
    info = _eval_info({"open_drawer": [True, False, True], "close_drawer": [False, False]})
    result = start_ambiguity(info, ["open_drawer", "close_drawer"], eval_seed=100_000)
    assert result["by_possible_tasks"] == {1: {"successes": 2, "episodes": 5}}
    assert result["language_blind_ceiling"] == 1.0
    assert result["success"] == pytest.approx(0.4)


def test_each_episode_is_counted_with_its_own_start():
    seed = 7
    info = _eval_info({"turn_on_led": [True] * 3})
    result = start_ambiguity(info, FOUR_TASKS, eval_seed=seed)
    ks = [len(possible_tasks(draw_task_start("turn_on_led", seed + i, "evaluate").condition, FOUR_TASKS))
          for i in range(3)]  # fmt: skip
    assert sum(c["episodes"] for c in result["by_possible_tasks"].values()) == 3
    assert result["language_blind_ceiling"] == pytest.approx(sum(1 / k for k in ks) / 3)
    for k in set(ks):
        assert result["by_possible_tasks"][k]["successes"] == ks.count(k)


def test_part1_starts_and_the_language_blind_ceiling():
    results = analyse_output_dir(PART1)
    assert set(results) == {
        f"{p}_{s:06d}" for p in ("act", "defi_no_pretraining", "diffusion") for s in (400, 800)
    }
    final = results["act_000800"]
    counts = {k: (c["successes"], c["episodes"]) for k, c in final["by_possible_tasks"].items()}
    # ACT solves starts where only the asked task is possible
    assert counts == {1: (4, 9), 2: (1, 46), 3: (0, 25)}
    assert final["language_blind_ceiling"] == pytest.approx(121 / 240)  # (9 + 46 / 2 + 25 / 3) / 80
    defi = results["defi_no_pretraining_000800"]["by_possible_tasks"]
    assert {k: c["successes"] for k, c in defi.items()} == {1: 7, 2: 30, 3: 19}
    # The reconstructed starts give the recorded success rates back.
    recorded = json.loads((PART1 / "results.json").read_text())["policies"]["defi_no_pretraining"]["final"]
    assert results["defi_no_pretraining_000800"]["success"] == pytest.approx(recorded["mean_success"])


def test_part2_defi_with_pretraining_on_the_same_starts():
    results = analyse_output_dir(PART2)
    assert set(results) == {"defi_000400", "defi_000800"}
    final = results["defi_000800"]
    counts = {k: (c["successes"], c["episodes"]) for k, c in final["by_possible_tasks"].items()}
    # the same 80 starts as part 1 (same eval seed and tasks), so the same split by k
    assert counts == {1: (9, 9), 2: (40, 46), 3: (19, 25)}
    assert final["language_blind_ceiling"] == pytest.approx(121 / 240)
    recorded = json.loads((PART2 / "results.json").read_text())["policies"]["defi"]["final"]
    assert final["success"] == pytest.approx(recorded["mean_success"])


def test_unknown_task_and_missing_folder_are_named(tmp_path):
    with pytest.raises(ValueError, match="turn_off_led"):
        start_ambiguity(_eval_info({"turn_off_led": [True]}), FOUR_TASKS, eval_seed=0)
    with pytest.raises(FileNotFoundError, match=r"benchmark_config\.json"):
        analyse_output_dir(tmp_path)
    (tmp_path / "benchmark_config.json").write_text(json.dumps({"tasks": FOUR_TASKS, "eval_seed": 0}))
    with pytest.raises(FileNotFoundError, match=r"eval_info\.json"):
        analyse_output_dir(tmp_path)
