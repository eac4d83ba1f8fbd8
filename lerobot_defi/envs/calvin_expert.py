"""A scripted CALVIN expert: Cartesian skills driven from the simulator's privileged state.

The expert acts in CALVIN's action space, the 7-D relative action ``[dx, dy, dz, droll, dpitch, dyaw,
gripper]`` (position steps of 0.02 m and orientation steps of 0.05 rad per unit, gripper exactly -1
close / 1 open). calvin_env integrates each relative action into the robot's *target* pose
(``robot.target_pos`` / ``robot.target_orn``) and tracks that target with inverse kinematics, so the
expert steers the target pose towards waypoints and waits, where it matters, until the measured gripper
pose has caught up. Waypoints come from the scene state (``scene_obs``: joint positions of the doors and
poses of the blocks) and from fixed geometry of CALVIN's scene D, measured in the simulator.

A skill is a generator: it reads the live simulator through :class:`SceneView` and yields one action
per control step (30 Hz). ``SKILLS`` maps each CALVIN task the expert can do to its skill.
The expert is privileged (it reads the target pose and exact object poses); a policy never sees those.
"""

from collections.abc import Callable, Iterator

import numpy as np

from lerobot_defi.envs.calvin_initial_state import EVALUATION_HOME_ROBOT_OBS

POSITION_STEP = 0.02  # metres per unit of a relative position action
ORIENTATION_STEP = 0.05  # radians per unit of a relative orientation action
OPEN, CLOSE = 1.0, -1.0
HOME_POSITION = EVALUATION_HOME_ROBOT_OBS[:3]
HOME_ORIENTATION = EVALUATION_HOME_ROBOT_OBS[3:6]  # gripper pointing down, euler xyz

# Scene D geometry (world frame, metres), measured in the simulator.
BUTTON_TOP = np.array([-0.12, -0.12, 0.472])  # the push button that toggles the green LED
DRAWER_HANDLE_CLOSED = np.array([0.18, -0.262, 0.36])  # front of the drawer handle, drawer closed
SLIDER_HANDLE_X_RIGHT = 0.05  # x of the sliding door's handle when the door is right (joint 0)
SLIDER_HANDLE_Y, SLIDER_HANDLE_Z = -0.02, 0.50
SWITCH_X = 0.30  # the switch that turns the lightbulb on (up) and off (down)
BLOCK_POSE_INDEX = {"red": 6, "blue": 12, "pink": 18}  # scene_obs offset of each block's xyz + euler
SLIDER_JOINT, DRAWER_JOINT, LED_ON, LIGHTBULB_ON = 0, 1, 5, 4  # scene_obs entries


def offset(dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> np.ndarray:
    """A displacement (3,) in metres, added to a point of the scene."""
    return np.array([dx, dy, dz], dtype=float)


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles mapped to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class SceneView:
    """Read-only view of a live calvin_env ``PlayTableSimEnv`` for the expert (privileged state)."""

    def __init__(self, simulator):
        self._simulator = simulator

    @property
    def robot(self):
        return self._simulator.robot

    @property
    def target_position(self) -> np.ndarray:
        return np.asarray(self.robot.target_pos, dtype=float)

    @property
    def target_orientation(self) -> np.ndarray:
        return np.asarray(self.robot.target_orn, dtype=float)

    @property
    def gripper_position(self) -> np.ndarray:
        """Measured position of the gripper's tool centre point (TCP), (3,)."""
        return np.asarray(self._simulator.robot.get_observation()[0][:3], dtype=float)

    @property
    def scene_obs(self) -> np.ndarray:
        """CALVIN's scene state (24,): door joints, lights, block poses."""
        return np.asarray(self._simulator.scene.get_obs(), dtype=float)

    def block_position(self, color: str) -> np.ndarray:
        index = BLOCK_POSE_INDEX[color]
        return self.scene_obs[index : index + 3].copy()

    def block_yaw(self, color: str) -> float:
        return float(self.scene_obs[BLOCK_POSE_INDEX[color] + 5])


class CartesianDriver:
    """Turns Cartesian waypoints into CALVIN relative actions by steering the robot's target pose."""

    def __init__(self, view: SceneView):
        self.view = view
        self.gripper = OPEN

    def move(
        self,
        position,
        yaw: float = 0.0,
        gripper: float | None = None,
        speed: float = 1.0,
        tolerance: float = 0.012,
        max_steps: int = 60,
    ) -> Iterator[np.ndarray]:
        """Steer the target to ``position`` with the gripper pointing down, turned by ``yaw`` (rad) from the
        home orientation, at most ``speed`` units per step; then wait until the measured TCP is within
        ``tolerance`` m (or ``max_steps`` steps have passed, e.g. when a door or block blocks the way)."""
        if gripper is not None:
            self.gripper = gripper
        position = np.asarray(position, dtype=float)
        orientation = HOME_ORIENTATION + np.array([0.0, 0.0, yaw])
        for _ in range(max_steps):
            action = np.zeros(7)
            action[:3] = np.clip((position - self.view.target_position) / POSITION_STEP, -speed, speed)
            turn = wrap_angle(orientation - self.view.target_orientation)
            action[3:6] = np.clip(turn / ORIENTATION_STEP, -speed, speed)
            action[6] = self.gripper
            yield action
            target_reached = (
                np.abs(position - self.view.target_position).max() < 1e-4
                and np.abs(wrap_angle(orientation - self.view.target_orientation)).max() < 1e-4
            )
            if target_reached and np.linalg.norm(self.view.gripper_position - position) < tolerance:
                return

    def set_gripper(self, value: float, steps: int = 10) -> Iterator[np.ndarray]:
        """Hold still and open (1) or close (-1) the gripper for ``steps`` steps."""
        self.gripper = value
        for _ in range(steps):
            yield np.array([0, 0, 0, 0, 0, 0, value], dtype=float)


Skill = Callable[[CartesianDriver], Iterator[np.ndarray]]


# --- articulated objects ------------------------------------------------------------------------------
def press_button(d: CartesianDriver) -> Iterator[np.ndarray]:
    """Press the LED's push button (toggles the LED on or off)."""
    yield from d.move(BUTTON_TOP + offset(0, 0, 0.06), gripper=CLOSE)
    yield from d.move(BUTTON_TOP + offset(0, 0, -0.01), speed=0.4, max_steps=10)
    yield from d.move(BUTTON_TOP + offset(0, 0, 0.07), speed=0.7)


def open_drawer(d: CartesianDriver) -> Iterator[np.ndarray]:
    handle = DRAWER_HANDLE_CLOSED + offset(0, -d.view.scene_obs[DRAWER_JOINT], 0)
    yield from d.move(handle + offset(0, 0.03, 0.08), gripper=CLOSE)
    yield from d.move(handle + offset(0, 0.03, 0.0), speed=0.5, tolerance=0.008, max_steps=15)
    yield from d.move(handle + offset(0, -0.18, 0.0), speed=0.6, tolerance=0.008, max_steps=30)
    yield from d.move(handle + offset(0, -0.20, 0.08))


def close_drawer(d: CartesianDriver) -> Iterator[np.ndarray]:
    handle = DRAWER_HANDLE_CLOSED + offset(0, -d.view.scene_obs[DRAWER_JOINT], 0)
    yield from d.move(handle + offset(0, -0.05, 0.06), gripper=CLOSE)
    yield from d.move(handle + offset(0, -0.05, 0.0), speed=0.5, tolerance=0.008, max_steps=15)
    yield from d.move(handle + offset(0, 0.19, 0.0), speed=0.7, max_steps=30)
    yield from d.move(handle + offset(0, 0.12, 0.10))


def move_slider(direction: str) -> Skill:
    """Push the sliding door by its handle to the ``left`` (-x) or ``right`` (+x)."""
    sign = -1.0 if direction == "left" else 1.0

    def skill(d: CartesianDriver) -> Iterator[np.ndarray]:
        x = SLIDER_HANDLE_X_RIGHT - d.view.scene_obs[SLIDER_JOINT]
        y, z = SLIDER_HANDLE_Y, SLIDER_HANDLE_Z
        yield from d.move([x - sign * 0.06, y - 0.08, z], gripper=CLOSE)
        yield from d.move([x - sign * 0.06, y, z], speed=0.5, tolerance=0.008, max_steps=15)
        yield from d.move([x + sign * 0.19, y, z], speed=0.7, max_steps=30)
        yield from d.move([x + sign * 0.19, y - 0.08, z + 0.03])

    return skill


def switch_up(d: CartesianDriver) -> Iterator[np.ndarray]:
    """Push the switch up: the lightbulb turns on."""
    yield from d.move([SWITCH_X, -0.08, 0.48], gripper=CLOSE)
    yield from d.move([SWITCH_X, 0.015, 0.48], speed=0.5, max_steps=10)
    yield from d.move([SWITCH_X, 0.075, 0.58], speed=0.5, max_steps=20)
    yield from d.move([SWITCH_X, -0.08, 0.60])


def switch_down(d: CartesianDriver) -> Iterator[np.ndarray]:
    """Push the switch down from above: the lightbulb turns off. The arm cannot reach above the switch's
    middle, so the first waypoint is only approached (20 steps) and the fingers come down on its left end."""
    yield from d.move([SWITCH_X, 0.10, 0.70], gripper=CLOSE, max_steps=20)
    yield from d.move([SWITCH_X, 0.10, 0.635], speed=0.5, max_steps=15)
    yield from d.move([SWITCH_X, 0.04, 0.53], speed=0.5, max_steps=25)
    yield from d.move([SWITCH_X, -0.06, 0.60])


# --- blocks -------------------------------------------------------------------------------------------
def grasp_block(d: CartesianDriver, color: str) -> Iterator[np.ndarray]:
    block = d.view.block_position(color)
    yield from d.move(block + offset(0, 0, 0.10), gripper=OPEN)
    yield from d.move(block + offset(0, 0, 0.005), speed=0.5, tolerance=0.008, max_steps=20)
    yield from d.set_gripper(CLOSE, 8)


def lift_block(color: str) -> Skill:
    def skill(d: CartesianDriver) -> Iterator[np.ndarray]:
        block = d.view.block_position(color)
        yield from grasp_block(d, color)
        yield from d.move(block + offset(0, 0, 0.12), speed=0.5)

    return skill


def push_block(color: str, direction: str) -> Skill:
    sign = -1.0 if direction == "left" else 1.0

    def skill(d: CartesianDriver) -> Iterator[np.ndarray]:
        block = d.view.block_position(color)
        yield from d.move(block + offset(-sign * 0.07, 0, 0.08), gripper=CLOSE)
        yield from d.move(block + offset(-sign * 0.07, 0, 0.01), speed=0.5, tolerance=0.008, max_steps=20)
        yield from d.move(block + offset(sign * 0.09, 0, 0.01), speed=0.5, max_steps=30)
        yield from d.move(block + offset(sign * 0.09, 0, 0.09))

    return skill


def rotate_block(color: str, direction: str) -> Skill:
    turn = 1.3 if direction == "left" else -1.3

    def skill(d: CartesianDriver) -> Iterator[np.ndarray]:
        block = d.view.block_position(color)
        yield from grasp_block(d, color)
        yield from d.move(block + offset(0, 0, 0.02), speed=0.5, tolerance=0.008, max_steps=10)
        yield from d.move(block + offset(0, 0, 0.02), yaw=turn, max_steps=30)
        yield from d.move(block + offset(0, 0, 0.0), yaw=turn, speed=0.4, tolerance=0.008, max_steps=10)
        yield from d.set_gripper(OPEN, 6)
        yield from d.move(block + offset(0, 0, 0.08), yaw=turn)

    return skill


def _block_skills() -> dict[str, Skill]:
    skills = {}
    for color in BLOCK_POSE_INDEX:
        skills[f"lift_{color}_block_table"] = lift_block(color)
        for direction in ("left", "right"):
            skills[f"push_{color}_block_{direction}"] = push_block(color, direction)
            skills[f"rotate_{color}_block_{direction}"] = rotate_block(color, direction)
    return skills


SKILLS: dict[str, Skill] = {
    "open_drawer": open_drawer,
    "close_drawer": close_drawer,
    "move_slider_left": move_slider("left"),
    "move_slider_right": move_slider("right"),
    "turn_on_led": press_button,
    "turn_off_led": press_button,
    "turn_on_lightbulb": switch_up,
    "turn_off_lightbulb": switch_down,
    **_block_skills(),
}
