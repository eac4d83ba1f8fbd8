"""The scripted expert, the recorder (lerobot-defi-record-calvin) and the task-level evaluation mode, in the real
CALVIN simulator (calvin_env; skipped with a reason when it is not installed, see the README)."""

import json

import numpy as np
import pytest
from calvin_fakes import save_random_act_checkpoint
from lerobot_defi.conversions.calvin_format import ReadOptions, features
from test_calvin_env import run_lerobot_eval

from lerobot_defi.envs.calvin import CalvinEnv
from lerobot_defi.envs.calvin_expert import SKILLS, CartesianDriver, SceneView
from lerobot_defi.envs.calvin_instructions import load_instructions, training_instructions
from lerobot_defi.envs.calvin_recorder import (
    RECORDABLE_TASKS,
    RECORDING_REPORT_FILE,
    PerturbationConfig,
    RecordCalvinConfig,
    record_calvin,
)
from lerobot_defi.envs.calvin_task_starts import draw_task_start

pytestmark = pytest.mark.calvin_env


@pytest.fixture(scope="module")
def blind_simulator():
    """The real simulator without cameras (~300 steps/s) and CALVIN's task oracle."""
    import hydra
    from omegaconf import OmegaConf

    from lerobot_defi.envs.calvin_simulator import build_task_oracle, compose_env_config

    config = compose_env_config()
    OmegaConf.set_struct(config, False)
    config.cameras = {}
    simulator = hydra.utils.instantiate(
        config, show_gui=False, use_vr=False, use_scene_info=True, use_egl=False
    )
    yield simulator, build_task_oracle()
    simulator.close()
    simulator.cid = -1  # calvin_env's __del__ would disconnect a second time


def solve(simulator, oracle, task: str, seed: int, max_steps: int = 200) -> int | None:
    """Play the expert's skill from ``draw_task_start(task, seed)``; the step the oracle confirms, or None."""
    start = draw_task_start(task, seed)
    simulator.reset(robot_obs=start.robot_obs, scene_obs=start.scene_obs)
    simulator.robot.gripper_action = 1
    start_info = simulator.get_info()
    for step, action in enumerate(SKILLS[task](CartesianDriver(SceneView(simulator)))):
        _, _, _, info = simulator.step(action)
        if task in oracle.get_task_info_for_set(start_info, info, {task}):
            return step
        if step >= max_steps:
            break
    return None


def test_the_expert_solves_every_recordable_task(blind_simulator):
    assert len(RECORDABLE_TASKS) >= 16
    failures = {
        (task, seed): None
        for task in RECORDABLE_TASKS
        for seed in (0, 1)
        if solve(*blind_simulator, task, seed) is None
    }
    assert not failures


def record(tmp_path, name: str, **options) -> tuple:
    config = RecordCalvinConfig(
        repo_id=f"local/{name}", root=str(tmp_path / name), renderer="tiny", **options
    )
    root = record_calvin(config, progress=False)
    report = json.loads((root / "meta" / RECORDING_REPORT_FILE).read_text())
    return root, report


def frames_of(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/recorded", root=root)
    table = dataset.hf_dataset.with_format("numpy")
    return dataset, {key: np.stack(table[key]) for key in ("action", "observation.state", "episode_index")}


@pytest.mark.slow
def test_recorder_writes_the_converter_features_and_confirmed_episodes(tmp_path):
    tasks = ["turn_on_led", "open_drawer"]
    root, report = record(tmp_path, "expert", tasks=tasks, episodes_per_task=1, frames_after_success=3)
    dataset, frames = frames_of(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    converter = features(ReadOptions())
    assert {k: (v["dtype"], tuple(v["shape"])) for k, v in info["features"].items() if k in converter} == {
        k: (v["dtype"], tuple(v["shape"])) for k, v in converter.items()
    }
    assert dataset.num_episodes == 2 and info["fps"] == 30 and info["robot_type"] == "franka_calvin"
    assert report["tasks"] == {
        task: {
            "attempts": 1,
            "kept": 1,
            "expert_success_rate": 1.0,
            "mean_length": report["tasks"][task]["mean_length"],
        }
        for task in tasks
    }
    evaluation = load_instructions()
    for episode in report["episodes"]:
        # cut frames_after_success frames after the oracle's success step
        assert episode["length"] == episode["success_step"] + 3
        assert episode["instruction"] in training_instructions()[episode["task"]]
        assert episode["instruction"] != evaluation[episode["task"]]
        start = draw_task_start(episode["task"], episode["seed"])
        assert episode["initial_condition"] == start.condition
        task_strings = {
            dataset[i]["task"] for i in np.flatnonzero(frames["episode_index"] == episode["episode_index"])
        }
        assert task_strings == {episode["instruction"]}
    assert set(np.unique(frames["action"][:, -1])) <= {-1.0, 1.0}
    assert np.abs(frames["action"][:, :6]).max() <= 1.0

    # more episodes per task: the recording grows, what was there stays
    root, report = record(tmp_path, "expert", tasks=tasks, episodes_per_task=2, frames_after_success=3)
    _, grown = frames_of(root)
    assert report["total_episodes"] == 4
    first = np.isin(grown["episode_index"], [0, 1])
    assert np.array_equal(grown["action"][first], frames["action"])
    with pytest.raises(ValueError, match="frames_after_success"):
        record(tmp_path, "expert", tasks=tasks, episodes_per_task=2, frames_after_success=4)


@pytest.mark.slow
def test_recording_is_deterministic_with_worker_processes_and_perturbations(tmp_path):
    options = {
        "tasks": ["push_red_block_left", "turn_on_lightbulb"],
        "episodes_per_task": 1,
        "camera_size": 32,
        "use_videos": False,
        "perturbation": PerturbationConfig(probability=0.2, steps=3, scale=0.8),
    }
    root_a, report_a = record(tmp_path, "a", num_workers=1, **options)
    root_b, report_b = record(tmp_path, "b", num_workers=2, **options)
    dataset, a = frames_of(root_a)
    _, b = frames_of(root_b)
    assert report_a["episodes"] == report_b["episodes"]
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert dataset[0]["observation.images.static"].shape == (3, 32, 32)


@pytest.mark.slow
def test_failed_attempts_are_retried_with_the_next_seeds_and_reported(tmp_path):
    _, report = record(
        tmp_path,
        "short",
        tasks=["open_drawer"],
        episodes_per_task=1,
        max_attempts_per_task=2,
        max_episode_steps=5,
    )
    assert report["tasks"]["open_drawer"]["attempts"] == 2 and report["tasks"]["open_drawer"]["kept"] == 0
    assert sorted(report["failures"]) == ["open_drawer/000000", "open_drawer/000001"]


@pytest.mark.slow
def test_task_level_env_starts_from_the_drawn_state_and_reports_the_oracle(tmp_path):
    env = CalvinEnv(task="open_drawer", renderer="tiny", camera_size=48, episode_length=60)
    try:
        observation, info = env.reset(seed=5)
        start = draw_task_start("open_drawer", 5, purpose="evaluate")
        assert observation["pixels"]["static"].shape == (48, 48, 3) == observation["pixels"]["gripper"].shape
        assert np.allclose(observation["environment_state"][:6], start.scene_obs[:6], atol=1e-3)
        assert np.allclose(observation["agent_pos"][7:14], start.robot_obs[7:14], atol=1e-3)
        assert info["episode_seed"] == 5 and env.task_description == load_instructions()["open_drawer"]
        skill = SKILLS["open_drawer"](CartesianDriver(SceneView(env._simulator)))
        for action in skill:
            _, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert terminated and info["is_success"] and reward == 1.0 and env.subtask_steps < 60
        env.reset(seed=6)
        for _ in range(60):  # holding still never opens the drawer
            _, _, terminated, truncated, info = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
        assert truncated and not terminated and not info["is_success"]
    finally:
        env.close()


@pytest.mark.slow
def test_lerobot_eval_reports_success_per_task(monkeypatch, tmp_path):
    policy = save_random_act_checkpoint(tmp_path / "act", camera_keys=("static", "gripper"))
    info = run_lerobot_eval(
        monkeypatch,
        [
            f"--policy.path={policy}",
            "--env.type=calvin",
            "--env.tasks=[turn_on_led,close_drawer]",
            "--env.renderer=tiny",
            "--env.episode_length=4",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            f"--output_dir={tmp_path / 'eval'}",
        ],
    )
    assert sorted(entry["task_id"] for entry in info["per_task"]) == ["close_drawer", "turn_on_led"]
    assert info["overall"]["n_episodes"] == 2
    assert all(entry["metrics"]["successes"] == [False] for entry in info["per_task"])
