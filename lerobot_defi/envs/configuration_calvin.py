"""``--env.type=calvin``: the LeRobot ``EnvConfig`` of the CALVIN simulator.

``lerobot-eval --policy.path=... --env.type=calvin`` evaluates a policy on CALVIN's standard
evaluation sequences: episode ``k`` plays sequence ``first_sequence + k`` and chains its first
``subtasks_per_episode`` tasks (1 by default, which makes ``pc_success`` the benchmark's 1/5 success
rate; with 5 the average return is the average sequence length, but lerobot-eval does not reset the
policy between instructions — ``lerobot-defi-eval-calvin`` runs the full protocol).

Task-level evaluation: ``--env.tasks='[open_drawer,turn_on_led]'`` plays single-task episodes instead
(one vector env per task, so ``lerobot-eval`` reports success per task and overall): episode ``i`` of a
task starts from a scene drawn with seed ``--seed + i`` among CALVIN's initial conditions in which the
task can be done, robot at its home pose plus joint noise (a seed stream that
``lerobot-defi-record-calvin`` never uses); success = CALVIN's oracle within ``episode_length`` steps.
``--env.camera_size=N`` serves both cameras resized to N x N (datasets recorded with the same option).

Importing this module imports neither calvin_env nor PyBullet.
"""

import logging
from dataclasses import dataclass, field
from functools import partial

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.envs.utils import _LazyAsyncVectorEnv, env_to_policy_features, freeze_after_episode_end
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

from lerobot_defi.envs.calvin import (
    ACTION_DIM,
    CONTROL_FPS,
    GRIPPER_IMAGE_SHAPE,
    ROBOT_OBS_DIM,
    SCENE_OBS_DIM,
    STATIC_IMAGE_SHAPE,
    camera_shapes,
    make_calvin_env,
)
from lerobot_defi.envs.calvin_instructions import INSTRUCTION_SOURCES, dataset_instructions
from lerobot_defi.envs.calvin_sequences import SUBTASKS_PER_SEQUENCE
from lerobot_defi.envs.calvin_simulator import (
    CALVIN_ENV_INSTALL_HINT,
    DEFAULT_SCENE,
    RENDERERS,
    CalvinDatasetDirError,
    CalvinEnvNotInstalledError,
    calvin_env_available,
    calvin_env_package_dir,
    check_dataset_dir,
    print_if_uncaught,
    use_egl_for,
)
from lerobot_defi.envs.calvin_task_starts import TASK_PRECONDITIONS

logger = logging.getLogger(__name__)

STATIC_CAMERA_KEY = f"{OBS_IMAGES}.static"
GRIPPER_CAMERA_KEY = f"{OBS_IMAGES}.gripper"


class PolicyEnvMismatchError(ValueError):
    """A policy needs observations CALVIN does not serve, or acts in another action space."""


@EnvConfig.register_subclass("calvin")
@dataclass
class CalvinEnvConfig(EnvConfig):
    """CALVIN (PyBullet) with static + gripper cameras, robot state and relative 7-D actions."""

    # Unused: the tasks come from the evaluation sequences.
    task: str | None = None
    fps: int = CONTROL_FPS
    # Steps allowed per instruction: 360 in CALVIN's protocol, 720 in DeFI's evaluation code.
    episode_length: int = 360
    # Instructions chained per episode (1..5).
    subtasks_per_episode: int = 1
    # Episode k plays evaluation sequence first_sequence + k (modulo the number of sequences).
    first_sequence: int = 0
    # JSON file of [initial_condition, [task, ...]] pairs; default: the 1000 standard sequences.
    sequences_file: str | None = None
    # A CALVIN validation split folder (e.g. task_ABC_D/validation): simulator config from its
    # .hydra/merged_config.yaml and instructions from lang_annotations/. Default: calvin_env's
    # own config of `scene` and the packaged validation instructions.
    dataset_dir: str | None = None
    scene: str = DEFAULT_SCENE
    # "auto" (EGL if an EGL library exists: GPU, or Mesa on CPU), "egl", or "tiny" (CPU TinyRenderer).
    renderer: str = "auto"
    # "package.module:function" building (simulator, oracle) instead of calvin_env; see calvin_simulator.py.
    simulator_factory: str | None = None
    # Task-level mode: single-task episodes of these CALVIN tasks (one vector env per task); None: sequences.
    tasks: list[str] | None = None
    # Serve both cameras at camera_size x camera_size (None: 200x200 static, 84x84 gripper).
    camera_size: int | None = None
    # The sentence a task is given by: "evaluation" (CALVIN's held-out validation sentence, its protocol),
    # "training" (the task's first training annotation sentence) or "dataset" (the task's sentence that most
    # episodes of the LeRobotDataset at instructions_dataset carry). The last two are for policies whose language
    # encoder cannot generalise to unseen paraphrases, e.g. the offline benchmark's random stand-ins: "dataset"
    # guarantees the words occur in the training data.
    instructions: str = "evaluation"
    instructions_dataset: str | None = None
    features: dict[str, PolicyFeature] = field(
        default_factory=lambda: {
            "pixels/static": PolicyFeature(type=FeatureType.VISUAL, shape=STATIC_IMAGE_SHAPE),
            "pixels/gripper": PolicyFeature(type=FeatureType.VISUAL, shape=GRIPPER_IMAGE_SHAPE),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(ROBOT_OBS_DIM,)),
            ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
        }
    )
    features_map: dict[str, str] = field(
        default_factory=lambda: {
            "pixels/static": STATIC_CAMERA_KEY,
            "pixels/gripper": GRIPPER_CAMERA_KEY,
            "agent_pos": OBS_STATE,
            "environment_state": OBS_ENV_STATE,
            ACTION: ACTION,
        }
    )

    def __post_init__(self):
        if self.episode_length < 1:
            raise ValueError(f"env.episode_length must be >= 1, got {self.episode_length}")
        if not 1 <= self.subtasks_per_episode <= SUBTASKS_PER_SEQUENCE:
            raise ValueError(
                f"env.subtasks_per_episode must be in [1, {SUBTASKS_PER_SEQUENCE}], got {self.subtasks_per_episode}"
            )
        if self.first_sequence < 0:
            raise ValueError(f"env.first_sequence must be >= 0, got {self.first_sequence}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"env.renderer must be one of {RENDERERS}, got {self.renderer!r}")
        if self.tasks is not None:
            unknown = [task for task in self.tasks if task not in TASK_PRECONDITIONS]
            if unknown or not self.tasks:
                raise ValueError(
                    f"env.tasks {unknown or self.tasks} cannot be played from a CALVIN initial condition; "
                    f"tasks that can: {sorted(TASK_PRECONDITIONS)}"
                )
            if self.subtasks_per_episode != 1:
                raise ValueError("env.tasks plays one task per episode: leave env.subtasks_per_episode at 1")
        if self.instructions not in INSTRUCTION_SOURCES:
            raise ValueError(
                f"env.instructions must be one of {INSTRUCTION_SOURCES}, got {self.instructions!r}"
            )
        if (self.instructions == "dataset") != (self.instructions_dataset is not None):
            raise ValueError(
                "env.instructions=dataset goes with env.instructions_dataset=<LeRobotDataset folder> (and only then)"
            )
        if self.camera_size is not None:
            if self.camera_size < 8:
                raise ValueError(f"env.camera_size must be >= 8 pixels, got {self.camera_size}")
            static_shape, gripper_shape = camera_shapes(self.camera_size)
            self.features["pixels/static"] = PolicyFeature(type=FeatureType.VISUAL, shape=static_shape)
            self.features["pixels/gripper"] = PolicyFeature(type=FeatureType.VISUAL, shape=gripper_shape)

    @property
    def package_name(self) -> str:
        return "lerobot_defi.envs"

    @property
    def gym_kwargs(self) -> dict:
        return {
            "episode_length": self.episode_length,
            "subtasks_per_episode": self.subtasks_per_episode,
            "sequences": self.sequences_file,
            "scene": self.scene,
            "dataset_dir": self.dataset_dir,
            "renderer": self.renderer,
            "simulator_factory": self.simulator_factory,
            "camera_size": self.camera_size,
            "instruction_source": self.instructions,
            "instructions": (
                dataset_instructions(self.instructions_dataset) if self.instructions == "dataset" else None
            ),
        }

    def provided_policy_features(self) -> dict[str, PolicyFeature]:
        """Every observation/action key the env serves to a policy, with LeRobot (C, H, W) image shapes."""
        provided = env_to_policy_features(self)
        provided[OBS_ENV_STATE] = PolicyFeature(type=FeatureType.ENV, shape=(SCENE_OBS_DIM,))
        return provided

    def validate_policy_features(self, policy_cfg, rename_map: dict[str, str] | None = None) -> None:
        """Raise ``PolicyEnvMismatchError`` if the policy needs inputs CALVIN does not serve or acts in another space.

        ``rename_map`` maps env keys to the policy's keys, as ``lerobot-eval --rename_map`` does.
        Policies without declared input features (built from scratch) take the env's and pass.
        """
        rename_map = rename_map or {}
        provided = {rename_map.get(key, key): ft for key, ft in self.provided_policy_features().items()}
        problems, unserved = [], []
        for key, feature in (policy_cfg.input_features or {}).items():
            served = provided.get(key)
            if served is None:
                problems.append(f"{key} {tuple(feature.shape)} is not served by the CALVIN env")
                unserved.append(key)
            elif feature.type is FeatureType.VISUAL and tuple(feature.shape)[:1] != (3,):
                problems.append(
                    f"{key} expects {tuple(feature.shape)}; CALVIN cameras are RGB {served.shape}"
                )
            elif feature.type is not FeatureType.VISUAL and tuple(feature.shape) != tuple(served.shape):
                problems.append(f"{key} expects shape {tuple(feature.shape)}; CALVIN serves {served.shape}")
        action = (policy_cfg.output_features or {}).get(ACTION)
        if action is not None and tuple(action.shape) != (ACTION_DIM,):
            problems.append(
                f"{ACTION} is {tuple(action.shape)}; CALVIN takes ({ACTION_DIM},) relative actions [dx, dy, dz, "
                "droll, dpitch, dyaw, gripper]: this policy was trained for another robot's action space, which no "
                "renaming changes; evaluate a policy trained on CALVIN data (lerobot-defi-convert calvin)"
            )
        if problems:
            served = ", ".join(f"{k} {tuple(f.shape)}" for k, f in provided.items())
            source = getattr(policy_cfg, "pretrained_path", None) or "the policy config"
            message = (
                f"The {getattr(policy_cfg, 'type', '?')} policy from {source} does not fit the CALVIN env:\n  - "
                + "\n  - ".join(problems)
                + f"\nCALVIN serves: {served}."
            )
            if unserved:  # only names can be mapped: the hint helps when the policy calls an input otherwise
                cameras = [k for k in unserved if policy_cfg.input_features[k].type is FeatureType.VISUAL]
                example = (
                    f'"{STATIC_CAMERA_KEY}": "{cameras[0]}"' if cameras else '"<CALVIN key>": "<policy key>"'
                )
                message += (
                    "\nIf only the names differ, map CALVIN's keys to the policy's with "
                    f"--rename_map='{{{example}}}'"
                )
            raise PolicyEnvMismatchError(message)

    def create_envs(
        self, n_envs: int, use_async_envs: bool = False
    ) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """One vector env of ``n_envs`` CALVIN envs; sub-env i plays sequences i, i + n, ... (offset).
        Task-level mode: one such vector env per task, ``{"calvin_tasks": {task: vector env}}``.

        Setup errors (calvin_env missing, a bad ``--env.dataset_dir``) print as one ``error:`` message, not a
        traceback, when they reach the top of ``lerobot-eval``."""
        try:
            if self.simulator_factory is None:
                if not calvin_env_available():
                    raise CalvinEnvNotInstalledError(CALVIN_ENV_INSTALL_HINT)
                calvin_env_package_dir()  # refuses a calvin_env folder that shadows the package
            check_dataset_dir(self.dataset_dir, "--env.dataset_dir")
        except (CalvinEnvNotInstalledError, CalvinDatasetDirError) as error:
            raise print_if_uncaught(error) from None
        if self.tasks is not None:
            return {
                "calvin_tasks": {
                    task: self._vector_env(n_envs, use_async_envs, lazy=True, task=task)
                    for task in self.tasks
                }
            }
        return {self.type: {0: self._vector_env(n_envs, use_async_envs)}}

    def _vector_env(
        self, n_envs: int, use_async_envs: bool, lazy: bool = False, **kwargs
    ) -> gym.vector.VectorEnv:
        """``lazy``: worker processes start at the first reset (LeRobot's lazy vector env), so only the task
        being evaluated holds simulators."""
        make_fns = [
            partial(
                make_calvin_env,
                sequence_offset=self.first_sequence + i,
                sequence_stride=n_envs,
                **self.gym_kwargs,
                **kwargs,
            )
            for i in range(n_envs)
        ]
        env_fns = [freeze_after_episode_end(fn) for fn in make_fns]
        if (
            n_envs > 1
            and not use_async_envs
            and self.simulator_factory is None
            and use_egl_for(self.renderer)
        ):
            logger.warning(
                "PyBullet's EGL renderer draws for one simulator per process: running the %d CALVIN envs in "
                "worker processes (AsyncVectorEnv) although use_async_envs=false.",
                n_envs,
            )
            use_async_envs = True
        if use_async_envs and n_envs > 1 and lazy:
            vector_env = _LazyAsyncVectorEnv(make_fns)  # adds freeze_after_episode_end itself
        elif use_async_envs and n_envs > 1:
            vector_env = gym.vector.AsyncVectorEnv(
                env_fns, context="forkserver", autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
            )
        else:
            vector_env = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        return vector_env
