"""CALVIN's long-horizon benchmark: metrics, the sequence loop, the CLI, resume and workers.

Sequence rollouts replay real recorded CALVIN episodes (tests/data/calvin_eval) through a playback
stand-in of the simulator, and again through the real calvin_env when it is installed (skipped with
a reason otherwise). CLI runs use a LeRobot ACT policy with random weights.
"""

import json
from pathlib import Path

import av
import pytest
from calvin_fakes import (
    ReplayAgent,
    load_recorded_episodes,
    recorded_sequence,
    save_random_act_checkpoint,
    write_sequences_file,
)
from lerobot.configs import PreTrainedConfig

from lerobot_defi.envs import calvin_benchmark
from lerobot_defi.envs.calvin import CalvinEnv
from lerobot_defi.envs.calvin_benchmark import main
from lerobot_defi.envs.calvin_metrics import (
    average_length,
    chain_success_rates,
    format_summary,
    per_task_success,
    summarize,
)
from lerobot_defi.envs.calvin_sequence_runner import run_sequence
from lerobot_defi.envs.calvin_video import OUTCOME_HOLD_FRAMES

PLAYBACK, REAL = "playback", "calvin_env"
EP_LEN = 80
LENIENT = "calvin_fakes:make_lenient_playback_simulator"
# Recorded tasks, then tasks the recordings never do, to make five-task sequences.
EXTRA_TASKS = [
    ["move_slider_left"],
    ["open_drawer", "turn_off_lightbulb"],
    ["open_drawer", "move_slider_left"],
]


# ---- metrics -------------------------------------------------------------------------------------------


def test_chain_rates_and_average_length():
    completed = [0, 5, 2, 2, 1]
    assert chain_success_rates(completed) == [0.8, 0.6, 0.2, 0.2, 0.2]
    assert average_length(completed) == 2.0
    # The average length is the sum of the chain success rates.
    assert average_length(completed) == pytest.approx(sum(chain_success_rates(completed)))
    with pytest.raises(ValueError, match="no sequence results"):
        average_length([])


def test_per_task_success_counts_only_attempted_tasks():
    tasks = [["a", "b", "c", "d", "e"], ["b", "a", "c", "d", "e"], ["c", "e", "a", "b", "d"]]
    per_task = per_task_success(tasks, [2, 0, 5])
    # seq 0: a, b solved, c failed; seq 1: b failed; seq 2: everything solved.
    assert {t: (v["success"], v["attempts"]) for t, v in per_task.items()} == {
        "a": (2, 2),
        "b": (2, 3),
        "c": (1, 2),
        "d": (1, 1),
        "e": (1, 1),
    }
    assert per_task["b"]["rate"] == pytest.approx(2 / 3)
    summary = summarize(tasks, [2, 0, 5])
    assert summary["average_length"] == pytest.approx(7 / 3)
    assert summary["chain_success_rates"]["3"] == pytest.approx(1 / 3)
    assert "Average length: 2.333" in format_summary(summary)


def test_options_are_written_as_lerobot_writes_them(capsys):
    """One dialect for every command: LeRobot's draccus options (``--num_sequences=5``); dashes are refused."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--num-sequences", "5"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --num-sequences" in capsys.readouterr().err


# ---- one sequence ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", [PLAYBACK, pytest.param(REAL, marks=[pytest.mark.slow, pytest.mark.calvin_env])]
)
def test_run_sequence_resets_the_policy_per_instruction_and_films_it(backend, tmp_path):
    episode = load_recorded_episodes()[2]  # rotate_red_block_right, close_drawer, turn_off_led
    env = CalvinEnv(
        episode_length=EP_LEN,
        subtasks_per_episode=5,
        sequences=[recorded_sequence(episode, EXTRA_TASKS[2])],
        simulator_factory="calvin_fakes:make_playback_simulator" if backend == PLAYBACK else None,
    )
    agent = ReplayAgent(episode)
    try:
        result = run_sequence(env, agent, 0, video_path=tmp_path / "sequence.mp4")
    finally:
        env.close()
    assert result.completed == 3
    assert result.tasks == [*episode.tasks, *EXTRA_TASKS[2]]
    # Three solved tasks and the failed fourth (EP_LEN steps); the fifth is never attempted.
    assert len(result.subtask_steps) == 4 and result.subtask_steps[-1] == EP_LEN
    assert sum(result.subtask_steps) == result.env_steps == len(agent.instructions)
    assert agent.reset_calls == 4  # at the start and after each of the three successes
    with av.open(str(tmp_path / "sequence.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 1 + result.env_steps + (OUTCOME_HOLD_FRAMES - 1) * len(result.subtask_steps)


# ---- the command line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_act(tmp_path_factory) -> Path:
    return save_random_act_checkpoint(tmp_path_factory.mktemp("act_calvin"))


@pytest.fixture(scope="module")
def recorded_sequences_file(tmp_path_factory) -> Path:
    episodes = load_recorded_episodes()
    sequences = [recorded_sequence(e, extra) for e, extra in zip(episodes, EXTRA_TASKS, strict=True)]
    return write_sequences_file(tmp_path_factory.mktemp("calvin_sequences") / "sequences.json", sequences)


def cli(policy: Path, sequences: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        f"--policy.path={policy}",
        f"--sequences_file={sequences}",
        f"--simulator_factory={LENIENT}",
        f"--ep_len={EP_LEN}",
        f"--output_dir={output_dir}",
        *extra,
    ]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cli_reports_the_benchmark_metrics(random_act, recorded_sequences_file, tmp_path):
    out = tmp_path / "eval"
    main(cli(random_act, recorded_sequences_file, out, "--num_sequences=3", "--video_sequences=[2]"))
    results = json.loads((out / "results.json").read_text())
    # The playback follows the recordings whatever the policy does: 4, 3 and 3 tasks in a row.
    assert [r["completed"] for r in read_lines(out / "sequences.jsonl")] == [4, 3, 3]
    assert results["num_sequences"] == 3
    assert results["average_length"] == pytest.approx(10 / 3)
    assert results["chain_success_rates"] == pytest.approx(
        {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1 / 3, "5": 0.0}
    )
    assert results["per_task"]["open_drawer"] == {"success": 1, "attempts": 3, "rate": pytest.approx(1 / 3)}
    assert "turn_off_lightbulb" not in results["per_task"]  # never attempted: a task before it failed
    assert results["protocol"]["ep_len"] == EP_LEN and results["protocol"]["policy_type"] == "act"
    assert results["env_steps"] == sum(r["env_steps"] for r in read_lines(out / "sequences.jsonl"))
    assert results["videos"] == [str(out / "videos" / "sequence_0002.mp4")]
    assert (out / "videos" / "sequence_0002.mp4").stat().st_size > 0


@pytest.mark.slow
def test_cli_resumes_a_partial_run_and_refuses_mismatches(
    random_act, recorded_sequences_file, tmp_path, capsys
):
    out = tmp_path / "eval"
    main(cli(random_act, recorded_sequences_file, out, "--num_sequences=1"))
    first = read_lines(out / "sequences.jsonl")
    with pytest.raises(SystemExit) as exit_info:  # an existing run is never overwritten silently
        main(cli(random_act, recorded_sequences_file, out, "--num_sequences=2"))
    assert exit_info.value.code == 2 and "--resume=true" in capsys.readouterr().err
    with open(out / "sequences.jsonl", "a") as f:  # a run killed while writing leaves a partial line
        f.write('{"index": 1, "tasks"')
    main(cli(random_act, recorded_sequences_file, out, "--num_sequences=2", "--resume=true"))
    lines = read_lines(out / "sequences.jsonl")
    assert [r["index"] for r in lines] == [0, 1] and lines[0] == first[0]
    assert json.loads((out / "results.json").read_text())["num_sequences"] == 2


def test_policy_with_other_cameras_fails_before_the_simulator_starts(
    tmp_path, recorded_sequences_file, capsys
):
    policy = save_random_act_checkpoint(tmp_path / "act_top", camera_keys=("top",))
    args = [
        f"--policy.path={policy}",
        f"--sequences_file={recorded_sequences_file}",
        "--simulator_factory=calvin_fakes:make_forbidden_simulator",
        f"--output_dir={tmp_path / 'eval'}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "observation.images.top (3, 200, 200) is not served by the CALVIN env" in message
    assert "--rename_map" in message
    assert not (tmp_path / "eval").exists()


def test_resume_with_other_settings_and_a_bad_dataset_dir_are_one_line_errors(
    random_act, recorded_sequences_file, tmp_path, capsys
):
    out = tmp_path / "eval"
    out.mkdir()
    args = cli(random_act, recorded_sequences_file, out, "--num_sequences=2", "--resume=true")
    settings = calvin_benchmark.CalvinBenchmarkConfig(
        policy=PreTrainedConfig.from_pretrained(random_act),
        ep_len=EP_LEN,
        sequences_file=str(recorded_sequences_file),
    )
    settings.policy.pretrained_path = random_act
    (out / calvin_benchmark.RUN_CONFIG_FILE).write_text(json.dumps({**settings.protocol(), "ep_len": 81}))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        f"error: cannot resume {out}: the evaluation settings differ (ep_len: 81 -> 80)"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                *cli(random_act, recorded_sequences_file, tmp_path / "other"),
                f"--dataset_dir={tmp_path / 'nope'}",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.splitlines()[-1].startswith(
        f"error: --dataset_dir={tmp_path / 'nope'}: no such folder; expected a CALVIN validation"
    )


def test_missing_calvin_env_gives_an_install_hint(random_act, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calvin_benchmark, "calvin_env_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main([f"--policy.path={random_act}", f"--output_dir={tmp_path / 'eval'}"])
    message = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "calvin_env` is not installed" in message and "Traceback" not in message
    assert "git clone https://github.com/mees/calvin_env.git ../calvin_env" in message
    assert "--recursive" not in message and "OUTSIDE the project folder" in message


@pytest.mark.slow
def test_worker_processes_give_the_in_process_results(random_act, recorded_sequences_file, tmp_path):
    main(cli(random_act, recorded_sequences_file, tmp_path / "one", "--num_sequences=3"))
    main(
        cli(
            random_act,
            recorded_sequences_file,
            tmp_path / "two",
            "--num_sequences=3",
            "--num_workers=2",
        )
    )

    def by_index(run: str) -> dict:
        return {
            r["index"]: (r["completed"], r["subtask_steps"])
            for r in read_lines(tmp_path / run / "sequences.jsonl")
        }

    assert by_index("two") == by_index("one")
    one, two = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert two["average_length"] == one["average_length"] and two["per_task"] == one["per_task"]


@pytest.mark.slow
@pytest.mark.calvin_env
def test_short_rollout_in_the_real_simulator(random_act, tmp_path):
    out = tmp_path / "eval"
    main([f"--policy.path={random_act}", "--num_sequences=2", "--ep_len=15", f"--output_dir={out}"])
    results = json.loads((out / "results.json").read_text())
    lines = read_lines(out / "sequences.jsonl")
    assert [r["index"] for r in lines] == [0, 1]
    for line in lines:
        assert line["env_steps"] == sum(line["subtask_steps"]) and 0 <= line["completed"] <= 5
    assert results["sim_steps_per_second"] > 0


def save_tiny_defi_checkpoint(path: Path) -> Path:
    """A tiny DeFI (random weights, CALVIN's two cameras, 7-D action) saved as a --policy.path folder."""
    import torch
    from defi_test_utils import tiny_config

    from lerobot_defi.policy.modeling_defi import DeFIPolicy
    from lerobot_defi.policy.processor_defi import make_defi_pre_post_processors

    torch.manual_seed(0)
    config = tiny_config(device="cpu")
    stats = {
        "action": {"min": -torch.ones(7), "max": torch.ones(7), "mean": torch.zeros(7), "std": torch.ones(7)}
    }
    DeFIPolicy(config).save_pretrained(path)
    for processor in make_defi_pre_post_processors(config, dataset_stats=stats):
        processor.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("backend", [PLAYBACK, pytest.param(REAL, marks=pytest.mark.calvin_env)])
def test_tiny_defi_runs_the_benchmark(backend, recorded_sequences_file, tmp_path):
    policy = save_tiny_defi_checkpoint(tmp_path / "defi")
    out = tmp_path / "eval"
    ep_len = 40
    args = [f"--policy.path={policy}", "--num_sequences=1", f"--ep_len={ep_len}", f"--output_dir={out}"]
    if backend == PLAYBACK:
        args += [f"--sequences_file={recorded_sequences_file}", f"--simulator_factory={LENIENT}"]
    main(args)
    [line] = read_lines(out / "sequences.jsonl")
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["policy_type"] == "defi" and results["protocol"]["ep_len"] == ep_len
    assert line["env_steps"] == sum(line["subtask_steps"]) == results["env_steps"]
    assert results["average_length"] == line["completed"]
    if backend == PLAYBACK:
        # The recording opens the drawer at step 33 and lifts the red block only 56 steps later.
        assert line["completed"] == 1 and line["subtask_steps"] == [33, ep_len]
    else:
        # Every attempted task but the last was solved; the last ran out of steps (or all five were solved).
        assert len(line["subtask_steps"]) == min(line["completed"] + 1, 5)
        assert line["completed"] == 5 or line["subtask_steps"][-1] == ep_len
