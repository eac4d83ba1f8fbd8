"""Where a single-task CALVIN episode starts: CALVIN's initial conditions, each task's precondition, seeds.

CALVIN's long-horizon benchmark draws its 1000 evaluation sequences from a fixed set of symbolic
*initial conditions*: every combination of LED and lightbulb (off/on), slider (right/left), drawer
(closed/open) and a place for each of the three blocks (``table``, ``slider_right``, ``slider_left``)
with one or two blocks on the table and at most one block on each side of the sliding cabinet, nothing
grasped (192 conditions). A condition becomes a simulator state with CALVIN's own mapping
(:func:`~lerobot_defi.envs.calvin_initial_state.state_for_initial_condition`: robot at the evaluation
home pose, block order and yaw from the condition's hash).

A single-task episode (the scripted recorder's and the task-level evaluation's) draws, from a seed, one
of those conditions in which the task can be done (its precondition in CALVIN's task table, e.g. the
drawer closed for ``open_drawer``) and perturbs the robot's home joint angles with small Gaussian noise.
Seeds of the recorder and of the evaluation live in separate streams (``purpose``), so an evaluation
never replays a recorded start.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product

import numpy as np

from lerobot_defi.envs.calvin_initial_state import CONDITION_KEYS, state_for_initial_condition

BLOCK_COLORS = ("red", "blue", "pink")
BLOCK_PLACES = ("table", "slider_right", "slider_left")
ROBOT_JOINT_SLICE = slice(7, 14)  # robot_obs entries of the 7 arm joints
# Standard deviation (rad) of the noise on each arm joint of the home pose (about 1 cm at the gripper).
DEFAULT_HOME_JOINT_NOISE = 0.02
PURPOSES = {"record": 0, "evaluate": 1}


def calvin_initial_conditions() -> list[dict]:
    """The 192 symbolic initial conditions of CALVIN's evaluation, in CALVIN's enumeration order."""
    options = {
        "led": (0, 1),
        "lightbulb": (0, 1),
        "slider": ("right", "left"),
        "drawer": ("closed", "open"),
        "red_block": BLOCK_PLACES,
        "blue_block": BLOCK_PLACES,
        "pink_block": BLOCK_PLACES,
        "grasped": (0,),
    }
    assert tuple(options) == CONDITION_KEYS
    conditions = []
    for values in product(*options.values()):
        blocks = values[4:7]
        if (
            blocks.count("table") in (1, 2)
            and blocks.count("slider_right") < 2
            and blocks.count("slider_left") < 2
        ):
            conditions.append(dict(zip(CONDITION_KEYS, values, strict=True)))
    return conditions


def _block_tasks() -> dict[str, tuple[dict, ...]]:
    preconditions = {}
    for color in BLOCK_COLORS:
        key = f"{color}_block"
        on_table = ({key: "table"},)
        for side in ("left", "right"):
            preconditions[f"rotate_{color}_block_{side}"] = on_table
            preconditions[f"push_{color}_block_{side}"] = on_table
        preconditions[f"lift_{color}_block_table"] = on_table
        # A block in the cabinet can be lifted where the sliding door does not cover it.
        preconditions[f"lift_{color}_block_slider"] = (
            {key: "slider_left", "slider": "right"},
            {key: "slider_right", "slider": "left"},
        )
    return preconditions


# Task -> alternative preconditions (any one must hold), for the CALVIN tasks that can start from an
# initial condition (CALVIN's task table; the others need a block grasped, stacked or in the drawer first).
TASK_PRECONDITIONS: dict[str, tuple[dict, ...]] = {
    "open_drawer": ({"drawer": "closed"},),
    "close_drawer": ({"drawer": "open"},),
    "move_slider_left": ({"slider": "right"},),
    "move_slider_right": ({"slider": "left"},),
    "turn_on_led": ({"led": 0},),
    "turn_off_led": ({"led": 1},),
    "turn_on_lightbulb": ({"lightbulb": 0},),
    "turn_off_lightbulb": ({"lightbulb": 1},),
    **_block_tasks(),
}


def conditions_for_task(task: str) -> list[dict]:
    """The initial conditions in which ``task`` can be done, in CALVIN's enumeration order."""
    _check_task(task)
    return [condition for condition in calvin_initial_conditions() if task_can_start(task, condition)]


def task_can_start(task: str, condition: Mapping) -> bool:
    """Whether ``task`` can be done from the initial ``condition`` (one of its preconditions holds)."""
    _check_task(task)
    return any(_holds(condition, pre) for pre in TASK_PRECONDITIONS[task])


def _check_task(task: str) -> None:
    if task not in TASK_PRECONDITIONS:
        raise KeyError(
            f"{task!r} cannot start from a CALVIN initial condition; tasks that can: {sorted(TASK_PRECONDITIONS)}"
        )


def _holds(condition: Mapping, precondition: Mapping) -> bool:
    return all(condition[key] == value for key, value in precondition.items())


@dataclass(frozen=True)
class TaskStart:
    """The start of one single-task episode: the symbolic condition and the simulator state."""

    task: str
    seed: int
    condition: dict
    robot_obs: np.ndarray  # (15,)
    scene_obs: np.ndarray  # (24,)


def draw_task_start(
    task: str, seed: int, purpose: str = "record", home_joint_noise: float = DEFAULT_HOME_JOINT_NOISE
) -> TaskStart:
    """The start of episode ``seed`` of ``task``: a condition drawn uniformly among those where the task
    can be done, CALVIN's state for it, and the home joint angles perturbed by ``N(0, home_joint_noise²)``.

    Deterministic in ``(task, seed, purpose)``; ``purpose`` ("record" or "evaluate") selects disjoint seed
    streams.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(PURPOSES)}, got {purpose!r}")
    if seed < 0:
        raise ValueError(f"episode seeds are >= 0, got {seed}")
    conditions = conditions_for_task(task)
    task_key = sorted(TASK_PRECONDITIONS).index(task)
    rng = np.random.default_rng([PURPOSES[purpose], task_key, seed])
    condition = conditions[int(rng.integers(len(conditions)))]
    robot_obs, scene_obs = state_for_initial_condition(condition)
    robot_obs[ROBOT_JOINT_SLICE] += rng.normal(0.0, home_joint_noise, size=7)
    return TaskStart(
        task=task, seed=seed, condition=dict(condition), robot_obs=robot_obs, scene_obs=scene_obs
    )
