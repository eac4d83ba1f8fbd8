"""Initial robot and scene state of a CALVIN evaluation sequence.

CALVIN's long-horizon evaluation describes the start of each sequence by a symbolic *initial
condition* (``{"led": 1, "lightbulb": 0, "slider": "left", "drawer": "closed", "red_block": "table",
...}``) and turns it into simulator states with a fixed home pose of the robot and block positions
whose order and yaw come from a random generator seeded by a hash of the condition. This module
reproduces that mapping so that every sequence starts from the same state as in the official
evaluation (checked against states recorded by the real simulator in ``tests``).

The hash is 32-bit FNV-1 with offset basis 0 over the UTF-16-LE bytes of
``str(condition.values())``: what ``pyhash.fnv1_32()`` computed in CALVIN's code, which no longer
builds on Python >= 3.11.
"""

from collections.abc import Mapping

import numpy as np

# Robot state (15,) at the evaluation home pose: tcp xyz, tcp euler xyz, gripper width, 7 joints, gripper action.
EVALUATION_HOME_ROBOT_OBS = np.array(
    [
        0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
        -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0,
    ]
)  # fmt: skip

# Block positions (world xyz, metres) in scene D.
BLOCK_ON_SLIDER_LEFT = np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01])
BLOCK_ON_SLIDER_RIGHT = np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])
BLOCK_TABLE_SPOTS = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
BLOCK_YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)

SLIDER_LEFT_POSITION = 0.28  # scene_obs[0]
DRAWER_OPEN_POSITION = 0.22  # scene_obs[1]
SWITCH_ON_POSITION = 0.088  # scene_obs[3]; the switch drives the lightbulb

CONDITION_KEYS = ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block", "grasped")

FNV1_PRIME_32 = 16777619


def fnv1_32(text: str, basis: int = 0) -> int:
    """32-bit FNV-1 (multiply, then xor) of ``text`` encoded as UTF-16-LE."""
    value = basis
    for byte in text.encode("utf-16-le"):
        value = (value * FNV1_PRIME_32) & 0xFFFFFFFF
        value ^= byte
    return value


def initial_condition_seed(condition: Mapping) -> int:
    """The seed CALVIN derives from an initial condition (depends on the key order, as in CALVIN)."""
    return fnv1_32(str(condition.values()))


def _block_position(place: str, table_spot: np.ndarray) -> np.ndarray:
    if place == "slider_left":
        return BLOCK_ON_SLIDER_LEFT
    if place == "slider_right":
        return BLOCK_ON_SLIDER_RIGHT
    return table_spot


def state_for_initial_condition(condition: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """``(robot_obs (15,), scene_obs (24,))`` for a CALVIN initial condition.

    ``scene_obs`` = slider, drawer, button, switch, lightbulb, led, then the red, blue and pink block
    poses (xyz + euler xyz each). Raises ``KeyError`` naming the missing condition keys.
    """
    missing = [key for key in CONDITION_KEYS if key not in condition]
    if missing:
        raise KeyError(f"CALVIN initial condition {dict(condition)} lacks the keys {missing}")
    rng = np.random.RandomState(initial_condition_seed(condition))
    table_spots = list(BLOCK_TABLE_SPOTS)
    rng.shuffle(table_spots)

    scene_obs = np.zeros(24)
    if condition["slider"] == "left":
        scene_obs[0] = SLIDER_LEFT_POSITION
    if condition["drawer"] == "open":
        scene_obs[1] = DRAWER_OPEN_POSITION
    if condition["lightbulb"] == 1:
        scene_obs[3] = SWITCH_ON_POSITION
    scene_obs[4] = condition["lightbulb"]
    scene_obs[5] = condition["led"]

    scene_obs[6:9] = _block_position(condition["red_block"], table_spots[0])
    scene_obs[11] = rng.uniform(*BLOCK_YAW_RANGE)
    # The blue block takes the second table spot only when the red block occupies the first one.
    blue_spot = table_spots[1] if condition["red_block"] == "table" else table_spots[0]
    scene_obs[12:15] = _block_position(condition["blue_block"], blue_spot)
    scene_obs[17] = rng.uniform(*BLOCK_YAW_RANGE)
    scene_obs[18:21] = _block_position(condition["pink_block"], table_spots[1])
    scene_obs[23] = rng.uniform(*BLOCK_YAW_RANGE)
    return EVALUATION_HOME_ROBOT_OBS.copy(), scene_obs
