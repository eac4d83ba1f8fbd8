"""CALVIN as a gymnasium environment: evaluation sequences with chained language instructions.

Each episode runs one CALVIN evaluation sequence: the simulator is reset to the sequence's initial
scene state, the policy gets the instruction of the first task, and CALVIN's task oracle compares
the scene at the start of the task with the scene after every step. When the task is solved the
next task's instruction is served (``info["subtask_success"]`` marks that step; callers that reset
their policy between instructions do it there); the episode ends successfully after
``subtasks_per_episode`` solved tasks, and unsuccessfully when a task is not solved within
``episode_length`` steps. The reward is 1 for every solved task, so an episode's return is the
number of chained tasks solved.

Observations (raw, as LeRobot's ``preprocess_observation`` expects them)::

    pixels/static        (200, 200, 3) uint8   static camera     -> observation.images.static
    pixels/gripper       (84, 84, 3)   uint8   wrist camera      -> observation.images.gripper
    agent_pos            (15,)         float32 robot_obs         -> observation.state
    environment_state    (24,)         float32 scene_obs         -> observation.environment_state

Task-level mode (``task=...``): every episode plays that one task from a start drawn with the reset's
seed among CALVIN's initial conditions in which the task can be done, robot at its home pose plus joint
noise (:func:`~lerobot_defi.envs.calvin_task_starts.draw_task_start` with ``purpose="evaluate"``, a seed
stream the scripted recorder never uses); success is CALVIN's oracle within ``episode_length`` steps.

``camera_size=N`` serves both cameras at N x N: calvin_env renders them at that size (CALVIN's camera poses and
fields of view, as the recorder's ``--camera_size`` does); a custom simulator that ignores it is resized
(:func:`resize_camera_image`).

Actions: (7,) CALVIN relative actions ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` in [-1, 1];
the gripper is binarized to exactly -1 (close) or 1 (open) before it reaches the simulator.

The simulator is built on the first ``reset`` (inside a vector env's worker process), not in the
constructor, so constructing the env is cheap and never touches PyBullet.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lerobot_defi.envs.calvin_initial_state import state_for_initial_condition
from lerobot_defi.envs.calvin_instructions import check_instructions_cover, instructions_for
from lerobot_defi.envs.calvin_sequences import CalvinSequence, load_sequences
from lerobot_defi.envs.calvin_simulator import DEFAULT_SCENE, load_simulator_factory, reset_for_episode
from lerobot_defi.envs.calvin_task_starts import DEFAULT_HOME_JOINT_NOISE, draw_task_start

STATIC_IMAGE_SHAPE = (200, 200, 3)
GRIPPER_IMAGE_SHAPE = (84, 84, 3)
ROBOT_OBS_DIM = 15
SCENE_OBS_DIM = 24
ACTION_DIM = 7
CONTROL_FPS = 30
SEQUENCE_INDEX_OPTION = "sequence_index"


def resize_camera_image(image: np.ndarray, size: int | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8 (PIL bilinear, antialiased when shrinking); ``None``
    returns the image unchanged."""
    if size is None or image.shape[:2] == (size, size):
        return np.asarray(image, dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((size, size), Image.BILINEAR))


def binarize_gripper(action: np.ndarray) -> np.ndarray:
    """(7,) action as float64 with the gripper set to exactly 1 (open, if > 0) or -1 (close)."""
    action = np.array(action, dtype=np.float64).reshape(-1)
    if action.shape != (ACTION_DIM,):
        raise ValueError(f"CALVIN expects a ({ACTION_DIM},) relative action, got shape {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"CALVIN action has non-finite values: {action}")
    action[-1] = 1.0 if action[-1] > 0 else -1.0
    return action


class CalvinEnv(gym.Env):
    """CALVIN evaluation sequences as gymnasium episodes (see the module docstring)."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FPS}

    def __init__(
        self,
        episode_length: int = 360,
        subtasks_per_episode: int = 1,
        sequence_offset: int = 0,
        sequence_stride: int = 1,
        sequences: Sequence[CalvinSequence] | str | Path | None = None,
        instructions: dict[str, str] | None = None,
        scene: str = DEFAULT_SCENE,
        dataset_dir: str | Path | None = None,
        renderer: str = "auto",
        simulator_factory: str | None = None,
        cuda_device_index: int | None = None,
        render_mode: str = "rgb_array",
        task: str | None = None,
        camera_size: int | None = None,
        home_joint_noise: float = DEFAULT_HOME_JOINT_NOISE,
        instruction_source: str = "evaluation",
    ):
        super().__init__()
        if episode_length < 1:
            raise ValueError(f"episode_length (steps allowed per task) must be >= 1, got {episode_length}")
        if sequence_stride < 1 or sequence_offset < 0:
            raise ValueError(
                f"need sequence_offset >= 0 and sequence_stride >= 1, got {sequence_offset}, {sequence_stride}"
            )
        if render_mode != "rgb_array":
            raise ValueError(f"CalvinEnv renders only 'rgb_array', got {render_mode!r}")
        if task is not None:
            if subtasks_per_episode != 1:
                raise ValueError(
                    f"the task-level mode plays one task per episode, got subtasks_per_episode={subtasks_per_episode}"
                )
            start = draw_task_start(task, 0, purpose="evaluate")  # raises for tasks with no start
            sequences = [CalvinSequence(start.condition, (task,))]
        self.single_task = task
        self.camera_size = camera_size
        self.home_joint_noise = home_joint_noise
        self.episode_seed: int | None = None
        self.sequences = list(sequences) if isinstance(sequences, list | tuple) else load_sequences(sequences)
        shortest = min(len(s.tasks) for s in self.sequences)
        if not 1 <= subtasks_per_episode <= shortest:
            raise ValueError(f"subtasks_per_episode must be in [1, {shortest}], got {subtasks_per_episode}")
        self.instructions = (
            dict(instructions)
            if instructions is not None
            else instructions_for(instruction_source, dataset_dir)
        )
        check_instructions_cover(
            self.instructions,
            {task for s in self.sequences for task in s.tasks[:subtasks_per_episode]},
            f"dataset_dir={dataset_dir}" if dataset_dir is not None else "the packaged CALVIN instructions",
        )
        self.episode_length = episode_length
        self.subtasks_per_episode = subtasks_per_episode
        self.render_mode = render_mode
        self._simulator_kwargs = {
            "scene": scene,
            "dataset_dir": dataset_dir,
            "renderer": renderer,
            "cuda_device_index": cuda_device_index,
            **({"camera_size": camera_size} if camera_size is not None else {}),
        }
        self._simulator_factory_path = simulator_factory
        self._simulator = None
        self._oracle = None
        # Like LeRobot's LIBERO env: sub-env i of n plays sequences i, i + n, i + 2n, ... on plain resets.
        self._next_sequence_index = sequence_offset
        self._sequence_stride = sequence_stride
        # lerobot-eval stops a rollout after this many steps.
        self._max_episode_steps = episode_length * subtasks_per_episode

        static_shape, gripper_shape = camera_shapes(camera_size)
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict(
                    {
                        "static": spaces.Box(0, 255, static_shape, dtype=np.uint8),
                        "gripper": spaces.Box(0, 255, gripper_shape, dtype=np.uint8),
                    }
                ),
                "agent_pos": spaces.Box(-np.inf, np.inf, (ROBOT_OBS_DIM,), dtype=np.float32),
                "environment_state": spaces.Box(-np.inf, np.inf, (SCENE_OBS_DIM,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)

        self.sequence_index = -1
        self.sequence: CalvinSequence | None = None
        self.completed_subtasks = 0
        self.subtask_steps = 0
        self._start_info: dict | None = None
        self._last_static_image = np.zeros(static_shape, dtype=np.uint8)

    # ---- what lerobot-eval reads ----------------------------------------------------------------

    @property
    def task(self) -> str:
        """Name of the CALVIN task the policy must solve now (e.g. ``open_drawer``)."""
        if self.sequence is None:
            return ""
        return self.sequence.tasks[min(self.completed_subtasks, self.subtasks_per_episode - 1)]

    @property
    def task_description(self) -> str:
        """The instruction for the current task, served to the policy as its language input."""
        return self.instructions[self.task] if self.sequence is not None else ""

    # ---- gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a sequence: ``options={"sequence_index": i}`` picks one, otherwise the next in turn.
        In the task-level mode the episode's start is drawn with ``seed`` (else the next seed in turn)."""
        super().reset(seed=seed)
        options = options or {}
        if self.single_task is not None:
            return self._reset_single_task(seed)
        if options.get(SEQUENCE_INDEX_OPTION) is not None:
            index = int(options[SEQUENCE_INDEX_OPTION])
            if not 0 <= index < len(self.sequences):
                raise IndexError(f"sequence_index {index} outside [0, {len(self.sequences)})")
        else:
            index = self._next_sequence_index % len(self.sequences)
            self._next_sequence_index += self._sequence_stride
        simulator = self._ensure_simulator()
        self.sequence_index = index
        self.sequence = self.sequences[index]
        self.completed_subtasks = 0
        self.subtask_steps = 0
        robot_obs, scene_obs = state_for_initial_condition(self.sequence.initial_condition)
        simulator.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        # CALVIN's evaluation reads the observation and the oracle's reference state after the reset.
        observation = self._format_observation(simulator.get_obs())
        self._start_info = simulator.get_info()
        return observation, self._info(subtask_success=False, is_success=False)

    def _reset_single_task(self, seed: int | None):
        if seed is None:
            seed = self._next_sequence_index
            self._next_sequence_index += self._sequence_stride
        start = draw_task_start(
            self.single_task, seed, purpose="evaluate", home_joint_noise=self.home_joint_noise
        )
        simulator = self._ensure_simulator()
        self.episode_seed = seed
        self.sequence_index = -1
        self.sequence = CalvinSequence(start.condition, (self.single_task,))
        self.completed_subtasks = 0
        self.subtask_steps = 0
        # as the recorder starts its episodes: nothing carried over from the previous one
        observation = self._format_observation(reset_for_episode(simulator, start.robot_obs, start.scene_obs))
        self._start_info = simulator.get_info()
        return observation, self._info(subtask_success=False, is_success=False)

    def step(self, action: np.ndarray):
        if self.sequence is None:
            raise RuntimeError("CalvinEnv.step() called before reset()")
        if self.completed_subtasks >= self.subtasks_per_episode or self.subtask_steps >= self.episode_length:
            raise RuntimeError("CalvinEnv.step() called after the episode ended; call reset()")
        raw_observation, _, _, step_info = self._simulator.step(binarize_gripper(action))
        self.subtask_steps += 1
        observation = self._format_observation(raw_observation)
        current_task = self.task
        solved = current_task in self._oracle.get_task_info_for_set(
            self._start_info, step_info, {current_task}
        )
        terminated = truncated = False
        if solved:
            self.completed_subtasks += 1
            if self.completed_subtasks == self.subtasks_per_episode:
                terminated = True
            else:  # next instruction; the oracle's reference becomes the current scene
                self._start_info = step_info
                self.subtask_steps = 0
        elif self.subtask_steps >= self.episode_length:
            truncated = True
        info = self._info(
            subtask_success=solved, is_success=terminated, solved_task=current_task if solved else ""
        )
        return observation, float(solved), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The static camera image of the latest observation, (200, 200, 3) uint8."""
        return self._last_static_image

    def close(self) -> None:
        if self._simulator is not None:
            self._simulator.close()
            if getattr(self._simulator, "cid", None) is not None:
                self._simulator.cid = -1  # calvin_env's __del__ would disconnect a second time
            self._simulator = None
            self._oracle = None

    # ---- helpers ------------------------------------------------------------------------------------

    def _ensure_simulator(self):
        if self._simulator is None:
            factory = load_simulator_factory(self._simulator_factory_path)
            self._simulator, self._oracle = factory(**self._simulator_kwargs)
        return self._simulator

    def _format_observation(self, raw: dict) -> dict:
        try:
            static = raw["rgb_obs"]["rgb_static"]
            gripper = raw["rgb_obs"]["rgb_gripper"]
            robot_obs, scene_obs = raw["robot_obs"], raw["scene_obs"]
        except KeyError as error:
            raise KeyError(
                f"CALVIN observation lacks {error}; expected rgb_obs/rgb_static, rgb_obs/rgb_gripper, robot_obs "
                "and scene_obs (build the simulator with the static_and_gripper cameras)"
            ) from None
        served = {(STATIC_IMAGE_SHAPE, GRIPPER_IMAGE_SHAPE), camera_shapes(self.camera_size)}
        if (static.shape, gripper.shape) not in served:
            raise ValueError(
                f"CALVIN cameras render {static.shape} (static) and {gripper.shape} (gripper); expected "
                f"{STATIC_IMAGE_SHAPE} and {GRIPPER_IMAGE_SHAPE}, or camera_size {self.camera_size} squared"
            )
        self._last_static_image = resize_camera_image(static, self.camera_size)
        return {
            "pixels": {
                "static": self._last_static_image,
                "gripper": resize_camera_image(gripper, self.camera_size),
            },
            "agent_pos": np.asarray(robot_obs, dtype=np.float32),
            "environment_state": np.asarray(scene_obs, dtype=np.float32),
        }

    def _info(self, *, subtask_success: bool, is_success: bool, solved_task: str = "") -> dict:
        return {
            "is_success": is_success,
            "subtask_success": subtask_success,
            "solved_task": solved_task,
            "completed_subtasks": self.completed_subtasks,
            "sequence_index": self.sequence_index,
            "episode_seed": -1 if self.episode_seed is None else self.episode_seed,
            "task": self.task,
        }


def camera_shapes(camera_size: int | None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(static, gripper)`` image shapes served with ``camera_size`` (None: CALVIN's own)."""
    if camera_size is None:
        return STATIC_IMAGE_SHAPE, GRIPPER_IMAGE_SHAPE
    return (camera_size, camera_size, 3), (camera_size, camera_size, 3)


def make_calvin_env(**kwargs) -> CalvinEnv:
    """Factory used by ``CalvinEnvConfig.create_envs`` (picklable for async vector envs)."""
    return CalvinEnv(**kwargs)
