"""The CALVIN gymnasium env and its ``--env.type=calvin`` config (lerobot_defi/envs).

Rollout tests replay real recorded CALVIN episodes (tests/data/calvin_eval) and run twice: through
a playback stand-in of the simulator with a scene-state task oracle (always), and through the real
calvin_env with CALVIN's own oracle when calvin_env is installed (skipped with a reason otherwise).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from calvin_fakes import (
    CALVIN_EVAL_DATA,
    ReplayAgent,
    load_recorded_episodes,
    recorded_sequence,
    save_random_act_checkpoint,
    write_sequences_file,
)
from defi_test_utils import REPO_DIR, SHARED_DATA
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.factory import make_env_config
from lerobot.envs.utils import env_to_policy_features

from lerobot_defi.envs import CalvinEnvConfig
from lerobot_defi.envs.calvin import CalvinEnv, binarize_gripper
from lerobot_defi.envs.calvin_initial_state import state_for_initial_condition
from lerobot_defi.envs.calvin_instructions import load_instructions
from lerobot_defi.envs.calvin_sequences import load_sequences
from lerobot_defi.envs.calvin_simulator import (
    CALVIN_ENV_INSTALL_HINT,
    INSTALL_CHECK_COMMAND,
    CalvinDatasetDirError,
    CalvinEnvNotInstalledError,
    calvin_env_available,
    calvin_env_root,
    check_dataset_dir,
    require_calvin_env,
)
from lerobot_defi.envs.configuration_calvin import PolicyEnvMismatchError

PLAYBACK, REAL = "playback", "calvin_env"
BACKENDS = [PLAYBACK, pytest.param(REAL, marks=[pytest.mark.slow, pytest.mark.calvin_env])]
EPISODE_LENGTH = (
    80  # steps per instruction; every recorded task is solved within 70 steps of the previous one
)
INSTRUCTIONS = load_instructions()


def simulator_factory(backend: str) -> str | None:
    """None builds the real simulator (the tests of that backend are marked calvin_env); else the playback."""
    return None if backend == REAL else "calvin_fakes:make_playback_simulator"


def replay(env: CalvinEnv, agent: ReplayAgent, sequence_index: int) -> dict:
    """Run one episode with ``agent``; keep what each step showed."""
    observation, reset_info = env.reset(options={"sequence_index": sequence_index})
    trace = {
        "reset_observation": observation,
        "reset_info": reset_info,
        "infos": [],
        "rewards": [],
        "ends": [],
    }
    while True:
        observation, reward, terminated, truncated, info = env.step(
            agent.act(observation, env.task_description)
        )
        trace["infos"].append(info)
        trace["rewards"].append(reward)
        trace["ends"].append((terminated, truncated))
        if terminated or truncated:
            trace["last_observation"] = observation
            return trace


@pytest.fixture(scope="module", params=BACKENDS)
def episode_1_rollout(request) -> tuple:
    """Episode 1 of the recording (3 tasks) chained with a 4th task it never does."""
    factory = simulator_factory(request.param)
    episode = load_recorded_episodes()[1]
    env = CalvinEnv(
        episode_length=EPISODE_LENGTH,
        subtasks_per_episode=4,
        sequences=[recorded_sequence(episode, ["open_drawer"])],
        simulator_factory=factory,
    )
    agent = ReplayAgent(episode)
    try:
        trace = replay(env, agent, 0)
    finally:
        env.close()  # one EGL simulator per process: never keep it open across tests
    return episode, agent, trace


def success_steps(trace: dict) -> list[tuple[int, str]]:
    return [(t + 1, info["solved_task"]) for t, info in enumerate(trace["infos"]) if info["subtask_success"]]


def test_reset_serves_first_instruction_and_lerobot_observation(episode_1_rollout):
    episode, agent, trace = episode_1_rollout
    observation, info = trace["reset_observation"], trace["reset_info"]
    assert info["task"] == "move_slider_left" and info["completed_subtasks"] == 0 and not info["is_success"]
    assert (
        agent.instructions[0] == INSTRUCTIONS["move_slider_left"] == "push the sliding door to the left side"
    )
    assert (
        observation["pixels"]["static"].shape == (200, 200, 3)
        and observation["pixels"]["static"].dtype == np.uint8
    )
    assert (
        observation["pixels"]["gripper"].shape == (84, 84, 3)
        and observation["pixels"]["gripper"].dtype == np.uint8
    )
    assert observation["agent_pos"].shape == (15,) and observation["agent_pos"].dtype == np.float32
    assert observation["environment_state"].shape == (24,)
    # The episode starts in the recorded initial state (reset from the symbolic initial condition).
    np.testing.assert_allclose(observation["agent_pos"], episode.robot_obs[0], atol=1e-4)
    np.testing.assert_allclose(observation["environment_state"], episode.scene_obs[0], atol=0.005)


def test_instruction_switches_after_each_success(episode_1_rollout):
    episode, agent, trace = episode_1_rollout
    successes = success_steps(trace)
    assert (
        [task for _, task in successes]
        == episode.tasks
        == ["move_slider_left", "turn_on_lightbulb", "push_red_block_left"]
    )
    # Each task is judged solved inside the window where the recording solved it.
    for (step, task), primitive in zip(successes, episode.primitives, strict=True):
        first, last = primitive["frames"]
        assert first < step <= last, (task, step, primitive["frames"])
    # The policy saw each task's instruction exactly until the step that solved it, then the next one.
    boundaries = [0] + [step for step, _ in successes] + [len(agent.instructions)]
    expected_tasks = [*episode.tasks, "open_drawer"]
    for task, begin, end in zip(expected_tasks, boundaries[:-1], boundaries[1:], strict=True):
        assert set(agent.instructions[begin:end]) == {INSTRUCTIONS[task]}, task
    assert [info["task"] for info in trace["infos"][: successes[0][0] - 1]] == ["move_slider_left"] * (
        successes[0][0] - 1
    )


def test_successes_are_counted_and_an_unsolved_task_ends_the_episode(episode_1_rollout):
    _, _, trace = episode_1_rollout
    successes = success_steps(trace)
    assert sum(trace["rewards"]) == 3.0
    assert trace["infos"][-1]["completed_subtasks"] == 3
    assert [info["completed_subtasks"] for info in trace["infos"]][successes[0][0] - 1] == 1
    # The 4th task gets EPISODE_LENGTH steps, then the episode is truncated, never terminated.
    assert len(trace["infos"]) == successes[-1][0] + EPISODE_LENGTH
    assert trace["ends"][-1] == (False, True)
    assert not any(terminated for terminated, _ in trace["ends"])
    assert not any(info["is_success"] for info in trace["infos"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_solving_every_chained_task_terminates_with_success(backend):
    episode = load_recorded_episodes()[0]  # open_drawer, lift_red_block_table, ...
    env = CalvinEnv(
        episode_length=EPISODE_LENGTH,
        subtasks_per_episode=2,
        sequences=[recorded_sequence(episode)],
        simulator_factory=simulator_factory(backend),
    )
    try:
        trace = replay(env, ReplayAgent(episode), 0)
        assert [task for _, task in success_steps(trace)] == ["open_drawer", "lift_red_block_table"]
        assert trace["ends"][-1] == (True, False)
        assert trace["infos"][-1]["is_success"] and trace["infos"][-1]["completed_subtasks"] == 2
        assert sum(trace["rewards"]) == 2.0
        with pytest.raises(RuntimeError, match="after the episode ended"):
            env.step(np.zeros(7))
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.calvin_env
def test_real_simulator_renders_the_dataset_images():
    """The real env's first observation, EGL-rendered, is the recorded dataset frame (CALVIN's data is EGL)."""
    episode = load_recorded_episodes()[0]
    recorded = np.load(CALVIN_EVAL_DATA / "recorded_episodes.npz")
    env = CalvinEnv(sequences=[recorded_sequence(episode)], renderer="egl")
    try:
        observation, _ = env.reset()
    finally:
        env.close()
    for camera in ("static", "gripper"):
        difference = np.abs(
            observation["pixels"][camera].astype(int) - recorded[f"episode_0/first_rgb_{camera}"]
        )
        # Mesa renders it bit for bit; allow small GPU-driver differences (TinyRenderer is ~20 off).
        assert difference.mean() < 2.0, (camera, difference.mean())


@pytest.mark.slow
@pytest.mark.calvin_env
def test_a_second_egl_simulator_in_one_process_is_refused():
    first, second = CalvinEnv(renderer="egl"), CalvinEnv(renderer="egl")
    try:
        first.reset()
        with pytest.raises(RuntimeError, match="one simulator per process"):
            second.reset()
    finally:
        first.close()
    second.reset()  # fine once the first one is closed
    second.close()


@pytest.mark.slow
def test_sync_vector_envs_with_egl_run_in_worker_processes(monkeypatch, tmp_path):
    """The choice of vector env only: no simulator is built (none is needed), so calvin_env is made to look
    installed."""
    import gymnasium as gym

    from lerobot_defi.envs import configuration_calvin

    monkeypatch.setattr(configuration_calvin, "calvin_env_available", lambda: True)
    monkeypatch.setattr(configuration_calvin, "calvin_env_package_dir", lambda: tmp_path / "calvin_env")
    monkeypatch.setattr(configuration_calvin, "use_egl_for", lambda renderer: renderer != "tiny")
    envs = CalvinEnvConfig(renderer="egl").create_envs(n_envs=2, use_async_envs=False)
    try:
        assert isinstance(envs["calvin"][0], gym.vector.AsyncVectorEnv)
    finally:
        envs["calvin"][0].close()
    envs = CalvinEnvConfig(renderer="tiny").create_envs(n_envs=2, use_async_envs=False)
    assert isinstance(envs["calvin"][0], gym.vector.SyncVectorEnv)
    envs["calvin"][0].close()


def test_plain_resets_walk_the_sequences_with_a_stride():
    sequences = [recorded_sequence(e) for e in load_recorded_episodes()]
    env = CalvinEnv(
        sequences=sequences,
        sequence_offset=1,
        sequence_stride=2,
        simulator_factory="calvin_fakes:make_playback_simulator",
    )
    visited = [env.reset()[1]["sequence_index"] for _ in range(4)]
    assert visited == [1, 0, 2, 1]  # 1, 3, 5, 7 modulo 3 sequences
    assert env.reset(options={"sequence_index": 2})[1]["task"] == sequences[2].tasks[0]
    with pytest.raises(IndexError, match="sequence_index 3"):
        env.reset(options={"sequence_index": 3})


def test_env_builds_no_simulator_before_reset_and_rejects_misuse():
    env = CalvinEnv(simulator_factory="calvin_fakes:make_forbidden_simulator")
    assert env._max_episode_steps == 360 and env.task_description == ""
    assert set(env.observation_space["pixels"].spaces) == {"static", "gripper"}
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(7))
    with pytest.raises(AssertionError, match="must not be built"):
        env.reset()
    with pytest.raises(ValueError, match="subtasks_per_episode"):
        CalvinEnv(subtasks_per_episode=6)


def test_binarize_gripper():
    np.testing.assert_array_equal(binarize_gripper([0.1, 0, 0, 0, 0, 0, 0.3]), [0.1, 0, 0, 0, 0, 0, 1.0])
    assert binarize_gripper(np.array([0, 0, 0, 0, 0, 0, -0.01], dtype=np.float32))[-1] == -1.0
    assert binarize_gripper(np.zeros(7))[-1] == -1.0
    assert binarize_gripper(np.zeros(7)).dtype == np.float64
    with pytest.raises(ValueError, match=r"\(7,\) relative action"):
        binarize_gripper(np.zeros(8))
    with pytest.raises(ValueError, match="non-finite"):
        binarize_gripper([np.nan, 0, 0, 0, 0, 0, 1])


def test_initial_states_match_the_real_simulator_recording():
    for episode in load_recorded_episodes():
        robot_obs, scene_obs = state_for_initial_condition(episode.initial_condition)
        np.testing.assert_allclose(robot_obs, episode.robot_obs[0], atol=1e-5)
        # Positions settle by a few millimetres; the block order and yaws come from the seeded generator.
        np.testing.assert_allclose(scene_obs, episode.scene_obs[0], atol=0.005)
        np.testing.assert_allclose(scene_obs[[11, 17, 23]], episode.scene_obs[0][[11, 17, 23]], atol=2e-4)


def test_standard_sequences_and_instructions():
    sequences = load_sequences()
    assert len(sequences) == 1000 and all(len(s.tasks) == 5 for s in sequences)
    tasks = {t for s in sequences for t in s.tasks}
    assert len(tasks) == 34 and tasks <= set(INSTRUCTIONS)
    shared = SHARED_DATA / "calvin_eval_sequences_1000.json"
    if shared.is_file():
        assert json.loads(shared.read_text()) == [[s.initial_condition, list(s.tasks)] for s in sequences]


def test_packaged_instructions_equal_the_validation_annotations():
    validation = SHARED_DATA / "calvin_mini" / "validation"
    if not validation.is_dir():
        pytest.skip(f"{validation} is absent (the shared CALVIN sample data is not on this machine)")
    assert load_instructions(validation) == INSTRUCTIONS


def test_dataset_instructions_are_the_sentences_the_recorded_episodes_carry(tmp_path):
    """``--env.instructions=dataset``: each task asked for with a sentence of its own demonstrations (the recorded
    episode's, not the task's first training sentence, which it does not carry)."""
    from defi_test_utils import TESTS_DIR

    from lerobot_defi.envs.calvin_instructions import dataset_instructions, instructions_for
    from lerobot_defi.envs.configuration_calvin import CalvinEnvConfig

    root = TESTS_DIR / "data" / "calvin_expert_open_drawer"
    recorded = json.loads((root / "meta" / "calvin_recorded_episodes.jsonl").read_text().splitlines()[0])
    assert dataset_instructions(root) == {"open_drawer": recorded["instruction"]}
    assert recorded["instruction"] != instructions_for("training")["open_drawer"]
    config = CalvinEnvConfig(tasks=["open_drawer"], instructions="dataset", instructions_dataset=str(root))
    assert config.gym_kwargs["instructions"] == {"open_drawer": recorded["instruction"]}
    with pytest.raises(ValueError, match="instructions_dataset"):
        CalvinEnvConfig(instructions="dataset")
    with pytest.raises(FileNotFoundError, match="not a LeRobotDataset"):
        dataset_instructions(tmp_path)


def test_bad_data_paths_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lang_annotations/embeddings\.npy"):
        load_instructions(tmp_path)
    with pytest.raises(FileNotFoundError, match="sequences file not found"):
        load_sequences(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps([[{"led": 1}, ["open_drawer"]]]))
    with pytest.raises(ValueError, match=r"entry 0 lacks the keys \['lightbulb'"):
        load_sequences(tmp_path / "bad.json")


def test_missing_calvin_env_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "calvin_env", None)  # makes `import calvin_env` fail
    assert not calvin_env_available()
    with pytest.raises(CalvinEnvNotInstalledError, match=r"github\.com/mees/calvin_env"):
        require_calvin_env()
    with pytest.raises(
        CalvinEnvNotInstalledError, match=r"\.venv/bin/pip install --no-deps -e \.\./calvin_env"
    ):
        CalvinEnvConfig().create_envs(n_envs=1)
    with pytest.raises(CalvinEnvNotInstalledError):
        CalvinEnv().reset()


def test_the_install_check_is_one_command_named_the_same_everywhere(monkeypatch, capsys):
    """The hint, the README, the install guide and the check's own usage name one command; no text names another
    module of lerobot_defi.envs as something to run. Without the simulator it answers one ``error:`` line."""
    import re

    from lerobot_defi.envs import check_calvin_install

    command = ".venv/bin/python -m lerobot_defi.envs.check_calvin_install"
    assert (
        command == f".venv/bin/{INSTALL_CHECK_COMMAND}" and check_calvin_install.PROG == INSTALL_CHECK_COMMAND
    )
    assert command in CALVIN_ENV_INSTALL_HINT
    for page in (REPO_DIR / "README.md", REPO_DIR / "docs" / "installation.md"):
        assert command in page.read_text(), page
    texts = [
        REPO_DIR / "README.md",
        *(REPO_DIR / "docs").glob("*.md"),
        *(REPO_DIR / "lerobot_defi").rglob("*.py"),
    ]
    other_commands = {
        f"{path.relative_to(REPO_DIR)}: {match}"
        for path in texts
        for match in re.findall(r"-m lerobot_defi\.envs\.\w+", path.read_text())
        if match != "-m lerobot_defi.envs.check_calvin_install"
    }
    assert not other_commands
    monkeypatch.setitem(sys.modules, "calvin_env", None)  # makes `import calvin_env` fail
    assert check_calvin_install.main([]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: CALVIN's simulator `calvin_env` is not installed") and command in error


def _uncaught(monkeypatch, capsys, error: BaseException) -> str:
    """What Python prints when ``error`` reaches the top of a command (lerobot-eval lets it through)."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    capsys.readouterr()
    sys.excepthook(type(error), error, error.__traceback__)
    return capsys.readouterr().err


def test_lerobot_eval_setup_errors_print_one_message_not_a_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setitem(sys.modules, "calvin_env", None)
    with pytest.raises(CalvinEnvNotInstalledError) as missing:
        CalvinEnvConfig().create_envs(n_envs=1)
    printed = _uncaught(monkeypatch, capsys, missing.value)
    assert (
        printed.startswith("error: CALVIN's simulator `calvin_env` is not installed")
        and "Traceback" not in printed
    )
    monkeypatch.delitem(sys.modules, "calvin_env")
    config = CalvinEnvConfig(dataset_dir=str(tmp_path / "task_ABC_D" / "validaton"), simulator_factory="x:y")
    with pytest.raises(CalvinDatasetDirError) as bad_dir:
        config.create_envs(n_envs=1)
    printed = _uncaught(monkeypatch, capsys, bad_dir.value)
    assert (
        printed
        == f"error: --env.dataset_dir={tmp_path}/task_ABC_D/validaton: no such folder; expected a CALVIN "
        "validation split folder (e.g. task_ABC_D/validation) holding .hydra/merged_config.yaml and "
        "lang_annotations/embeddings.npy\n"
    )
    other = ValueError("not ours")  # any other uncaught error keeps its traceback
    try:
        raise other
    except ValueError:
        pass
    assert "Traceback" in _uncaught(monkeypatch, capsys, other)


def test_dataset_dir_is_checked_and_named_as_the_command_spells_it(tmp_path):
    check_dataset_dir(None, "--env.dataset_dir")
    split = tmp_path / "validation"
    (split / ".hydra").mkdir(parents=True)
    (split / ".hydra" / "merged_config.yaml").write_text("env: {}\n")
    with pytest.raises(
        CalvinDatasetDirError, match=r"^--dataset-dir=.*validation lacks lang_annotations/embeddings\.npy"
    ):
        check_dataset_dir(split, "--dataset-dir")
    (split / "lang_annotations").mkdir()
    (split / "lang_annotations" / "embeddings.npy").write_bytes(b"")
    check_dataset_dir(split, "--env.dataset_dir")


def test_a_calvin_env_clone_in_the_working_directory_is_refused_clearly(tmp_path, monkeypatch):
    """A clone inside the folder Python starts in is an empty namespace package named calvin_env, found before
    the installed package: the check must fail with what to do (it used to pass, and building the simulator
    failed later with a TypeError in calvin_env_root)."""
    import importlib

    clone = tmp_path / "calvin_env"  # a clone's root: conf/, data/, the package calvin_env/ inside
    (clone / "conf").mkdir(parents=True)
    (clone / "calvin_env").mkdir()
    (clone / "calvin_env" / "__init__.py").write_text("")
    saved = {k: v for k, v in sys.modules.items() if k == "calvin_env" or k.startswith("calvin_env.")}
    for name in saved:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(CalvinEnvNotInstalledError, match="namespace package") as refused:
            calvin_env_root()
        assert str(clone) in str(refused.value) and "outside the project folder" in str(refused.value)
        with pytest.raises(CalvinEnvNotInstalledError):
            require_calvin_env()
    finally:
        for name in [k for k in sys.modules if k == "calvin_env" or k.startswith("calvin_env.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_config_is_registered_with_the_dataset_feature_keys():
    config = make_env_config("calvin", episode_length=720)
    assert isinstance(config, CalvinEnvConfig) and config.gym_kwargs["episode_length"] == 720
    features = env_to_policy_features(config)
    assert {k: (f.type, f.shape) for k, f in features.items()} == {
        "observation.images.static": (FeatureType.VISUAL, (3, 200, 200)),
        "observation.images.gripper": (FeatureType.VISUAL, (3, 84, 84)),
        "observation.state": (FeatureType.STATE, (15,)),
        "action": (FeatureType.ACTION, (7,)),
    }
    with pytest.raises(ValueError, match="renderer"):
        CalvinEnvConfig(renderer="opengl")


def test_policy_features_are_checked_against_the_cameras(tmp_path):
    from lerobot.policies.act.configuration_act import ACTConfig

    def act(cameras: dict, state: int = 15, action: int = 7) -> ACTConfig:
        inputs = {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in cameras.items()}
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state,))
        return ACTConfig(
            input_features=inputs,
            output_features={"action": PolicyFeature(FeatureType.ACTION, (action,))},
            device="cpu",
            push_to_hub=False,
        )

    config = CalvinEnvConfig()
    config.validate_policy_features(act({"observation.images.static": (3, 200, 200)}))
    top = act({"observation.images.top": (3, 200, 200)})
    with pytest.raises(
        PolicyEnvMismatchError, match=r"observation\.images\.top \(3, 200, 200\) is not served"
    ) as error:
        config.validate_policy_features(top)
    assert """--rename_map='{"observation.images.static": "observation.images.top"}'""" in str(error.value)
    config.validate_policy_features(top, rename_map={"observation.images.static": "observation.images.top"})
    with pytest.raises(PolicyEnvMismatchError, match=r"observation\.state expects shape \(8,\)") as error:
        config.validate_policy_features(act({}, state=8))
    assert "--rename_map" not in str(error.value)  # no renaming fixes a size
    with pytest.raises(
        PolicyEnvMismatchError, match=r"action is \(14,\); CALVIN takes \(7,\) relative"
    ) as error:
        config.validate_policy_features(act({"observation.images.static": (3, 200, 200)}, action=14))
    assert "another robot's action space" in str(error.value) and "--rename_map" not in str(error.value)


@pytest.fixture(scope="module")
def random_act_checkpoint(tmp_path_factory) -> Path:
    return save_random_act_checkpoint(tmp_path_factory.mktemp("act_calvin"))


def run_lerobot_eval(monkeypatch, args: list[str]) -> dict:
    """``lerobot-eval`` in this process (its CLI parser reads sys.argv)."""
    from lerobot.scripts.lerobot_eval import eval_main

    monkeypatch.setattr(sys, "argv", ["lerobot-eval", *args])
    eval_main()
    output_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir=")))
    return json.loads((output_dir / "eval_info.json").read_text())


@pytest.mark.slow
def test_lerobot_eval_runs_calvin_episodes(monkeypatch, tmp_path, random_act_checkpoint):
    sequences = write_sequences_file(
        tmp_path / "sequences.json", [recorded_sequence(e) for e in load_recorded_episodes()]
    )
    info = run_lerobot_eval(
        monkeypatch,
        [
            f"--policy.path={random_act_checkpoint}",
            "--env.type=calvin",
            "--env.simulator_factory=calvin_fakes:make_lenient_playback_simulator",
            f"--env.sequences_file={sequences}",
            "--env.episode_length=80",
            "--eval.n_episodes=3",
            "--eval.batch_size=2",
            "--eval.use_async_envs=false",
            f"--output_dir={tmp_path / 'eval'}",
        ],
    )
    # The playback follows the recording whatever the policy does: every episode's first task is solved.
    assert info["overall"]["n_episodes"] == 3
    assert info["overall"]["pc_success"] == 100.0
    assert info["overall"]["avg_sum_reward"] == 1.0
    assert len(list((tmp_path / "eval" / "videos").rglob("*.mp4"))) >= 3  # LeRobot films whole batches


@pytest.mark.slow
@pytest.mark.calvin_env
def test_lerobot_eval_with_the_real_simulator(monkeypatch, tmp_path, random_act_checkpoint):
    info = run_lerobot_eval(
        monkeypatch,
        [
            f"--policy.path={random_act_checkpoint}",
            "--env.type=calvin",
            "--env.episode_length=10",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            f"--output_dir={tmp_path / 'eval'}",
        ],
    )
    assert info["overall"]["n_episodes"] == 1
    per_episode = info["per_task"][0]["metrics"]
    assert per_episode["successes"] == [False]  # a random policy does not rotate a block in 10 steps


def test_dataset_config_keeps_only_the_evaluation_cameras(tmp_path):
    pytest.importorskip("hydra", reason="hydra-core (the `calvin` extra) is not installed")
    from omegaconf import OmegaConf

    from lerobot_defi.envs.calvin_simulator import compose_env_config

    # The CALVIN release's merged config: cameras at the top level (with the tactile sensor, which
    # needs tacto), interpolated into env.cameras.
    cameras = {name: {"_target_": f"calvin_env.camera.{name}"} for name in ("static", "gripper", "tactile")}
    release = {"cameras": cameras, "env": {"_target_": "PlayTableSimEnv", "cameras": "${cameras}"}}
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(release), tmp_path / ".hydra" / "merged_config.yaml")
    env_config = compose_env_config(dataset_dir=tmp_path)
    assert list(env_config.cameras) == ["static", "gripper"]
    # A config resolved into env.cameras (as calvin_mini's) is pruned the same way.
    resolved = {"env": {"_target_": "PlayTableSimEnv", "cameras": cameras}}
    OmegaConf.save(OmegaConf.create(resolved), tmp_path / ".hydra" / "merged_config.yaml")
    assert list(compose_env_config(dataset_dir=tmp_path).cameras) == ["static", "gripper"]
    del resolved["env"]["cameras"]["gripper"]
    OmegaConf.save(OmegaConf.create(resolved), tmp_path / ".hydra" / "merged_config.yaml")
    with pytest.raises(KeyError, match=r"no \['gripper'\] camera"):
        compose_env_config(dataset_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\.hydra/merged_config\.yaml"):
        compose_env_config(dataset_dir=tmp_path / "missing")


def test_lerobot_eval_refuses_a_policy_with_other_cameras_before_the_simulator_starts(monkeypatch, tmp_path):
    policy = save_random_act_checkpoint(tmp_path / "act_top", camera_keys=("top",))
    with pytest.raises(ValueError, match=r"Missing features: \['observation\.images\.top'\]"):
        run_lerobot_eval(
            monkeypatch,
            [
                f"--policy.path={policy}",
                "--env.type=calvin",
                "--env.simulator_factory=calvin_fakes:make_forbidden_simulator",
                "--eval.n_episodes=1",
                "--eval.batch_size=1",
                f"--output_dir={tmp_path / 'eval'}",
            ],
        )
