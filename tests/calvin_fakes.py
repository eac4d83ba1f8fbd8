"""Stand-ins with calvin_env's interfaces, for tests on machines without the CALVIN simulator.

* ``PlaybackSimulator`` has ``PlayTableSimEnv``'s interface and plays back real recorded CALVIN
  episodes (``tests/data/calvin_eval``, recorded from the real simulator): a reset to an episode's
  initial state starts it, every step serves the next recorded frame (robot and scene state; the
  camera images are synthetic, their pixel value is the frame number). In strict mode it checks that
  each action is the recorded one, as the simulator receives it (float64, gripper exactly -1/1).
* ``SceneStateOracle`` has ``Tasks``' interface and judges the tasks of the recorded episodes from
  robot/scene states alone, with calvin_env's thresholds (the real oracle also uses contact points).
* ``ReplayAgent`` replays an episode's recorded relative actions, with the gripper scaled down to
  +-0.5 so that the env's binarization is exercised; it records the instructions it was given.

The factories are what ``--env.simulator_factory=calvin_fakes:<name>`` loads (tests put this folder
on the import path of subprocesses).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lerobot_defi.envs.calvin_sequences import CalvinSequence

CALVIN_EVAL_DATA = Path(__file__).resolve().parent / "data" / "calvin_eval"
INITIAL_STATE_TOLERANCE = (
    0.01  # recorded first frames differ from the reset state by physics settling (< 5 mm)
)


@dataclass
class RecordedEpisode:
    name: str
    initial_condition: dict
    primitives: list[dict]  # {"task": name, "frames": [first, last]} relative to the episode start
    robot_obs: np.ndarray  # (T, 15)
    scene_obs: np.ndarray  # (T, 24)
    rel_actions: np.ndarray  # (T, 7); action t leads from frame t to frame t + 1

    @property
    def tasks(self) -> list[str]:
        return [p["task"] for p in self.primitives]


def load_recorded_episodes() -> list[RecordedEpisode]:
    meta = json.loads((CALVIN_EVAL_DATA / "recorded_episodes.json").read_text())["episodes"]
    arrays = np.load(CALVIN_EVAL_DATA / "recorded_episodes.npz")
    return [
        RecordedEpisode(
            name=e["name"],
            initial_condition=e["initial_condition"],
            primitives=e["primitives"],
            robot_obs=arrays[f"{e['name']}/robot_obs"],
            scene_obs=arrays[f"{e['name']}/scene_obs"],
            rel_actions=arrays[f"{e['name']}/rel_actions"],
        )
        for e in meta
    ]


def recorded_sequence(episode: RecordedEpisode, extra_tasks: list[str] = ()) -> CalvinSequence:
    """A CALVIN sequence starting where ``episode`` starts: its recorded tasks, then ``extra_tasks``."""
    return CalvinSequence(initial_condition=episode.initial_condition, tasks=(*episode.tasks, *extra_tasks))


class PlaybackSimulator:
    """``PlayTableSimEnv``'s interface over recorded episodes (see the module docstring)."""

    def __init__(self, episodes: list[RecordedEpisode], check_actions: bool = True):
        self.episodes = episodes
        self.check_actions = check_actions
        self.episode: RecordedEpisode | None = None
        self.frame = 0
        self.actions: list[np.ndarray] = []
        self.closed = False

    def reset(self, robot_obs=None, scene_obs=None) -> dict:
        for episode in self.episodes:
            if np.abs(episode.scene_obs[0] - scene_obs).max() < INITIAL_STATE_TOLERANCE and np.allclose(
                episode.robot_obs[0], robot_obs, atol=INITIAL_STATE_TOLERANCE
            ):
                self.episode, self.frame, self.actions = episode, 0, []
                return self.get_obs()
        raise ValueError(f"no recorded episode starts at scene_obs {np.round(scene_obs, 3)}")

    def step(self, action: np.ndarray):
        assert action.dtype == np.float64 and action.shape == (7,), (action.dtype, action.shape)
        assert action[6] in (-1.0, 1.0), f"gripper action reached the simulator unbinarized: {action[6]}"
        self.actions.append(action.copy())
        last = len(self.episode.rel_actions) - 1
        if self.check_actions and self.frame < last:
            expected = self.episode.rel_actions[self.frame]
            np.testing.assert_allclose(action, expected, atol=1e-6, err_msg=f"action at frame {self.frame}")
        self.frame = min(self.frame + 1, last)
        return self.get_obs(), 0, False, self.get_info()

    def get_obs(self) -> dict:
        value = self.frame % 256
        return {
            "rgb_obs": {
                "rgb_static": np.full((200, 200, 3), value, dtype=np.uint8),
                "rgb_gripper": np.full((84, 84, 3), value, dtype=np.uint8),
            },
            "depth_obs": {},
            "robot_obs": self.episode.robot_obs[self.frame].copy(),
            "scene_obs": self.episode.scene_obs[self.frame].copy(),
        }

    def get_info(self) -> dict:
        return {
            "frame": self.frame,
            "robot_obs": self.episode.robot_obs[self.frame].copy(),
            "scene_obs": self.episode.scene_obs[self.frame].copy(),
        }

    def close(self) -> None:
        self.closed = True


BLOCK_OFFSETS = {"red": 6, "blue": 12, "pink": 18}  # scene_obs index of each block's xyz, euler at +3
DOORS = {
    "move_slider_left": (0, 0.15),
    "move_slider_right": (0, -0.15),
    "open_drawer": (1, 0.12),
    "close_drawer": (1, -0.12),
}
LIGHTS = {
    "turn_on_lightbulb": (4, 0, 1),
    "turn_off_lightbulb": (4, 1, 0),
    "turn_on_led": (5, 0, 1),
    "turn_off_led": (5, 1, 0),
}
HOLDING_WIDTH = 0.07  # gripper opening (robot_obs[6]) below this with a block between the fingers
LIFTED_HEIGHT = 0.47  # block z above the table top (0.46)
DRAWER_FLOOR_HEIGHT = 0.44  # a block lower than this, in front of the table, rests in the open drawer
DRAWER_MAX_Y = -0.25


class SceneStateOracle:
    """``Tasks.get_task_info_for_set`` for the tasks of the recorded episodes, from states alone."""

    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: set[str]) -> set[str]:
        return {task for task in task_filter if self._solved(task, start_info, end_info)}

    def _solved(self, task: str, start: dict, end: dict) -> bool:
        s0, s1 = start["scene_obs"], end["scene_obs"]
        if task in DOORS:
            index, threshold = DOORS[task]
            moved = s1[index] - s0[index]
            return 0 < threshold < moved or 0 > threshold > moved
        if task in LIGHTS:
            index, before, after = LIGHTS[task]
            return s0[index] == before and s1[index] == after
        words = task.split("_")
        if task == "place_in_drawer":
            return any(
                s0[i + 2] > LIFTED_HEIGHT and s1[i + 2] < DRAWER_FLOOR_HEIGHT and s1[i + 1] < DRAWER_MAX_Y
                for i in BLOCK_OFFSETS.values()
            )
        if words[0] in ("lift", "push", "rotate") and words[1] in BLOCK_OFFSETS:
            i = BLOCK_OFFSETS[words[1]]
            shift = s1[i : i + 3] - s0[i : i + 3]
            if words[0] == "lift":
                return (
                    shift[2] > (0.03 if words[-1] == "slider" else 0.05)
                    and end["robot_obs"][6] < HOLDING_WIDTH
                )
            if words[0] == "push":
                return abs(shift[2]) < 0.02 and (shift[0] < -0.1 if words[-1] == "left" else shift[0] > 0.1)
            yaw = np.degrees(np.angle(np.exp(1j * (s1[i + 5] - s0[i + 5]))))
            return np.linalg.norm(shift) < 0.1 and (yaw > 60 if words[-1] == "left" else yaw < -60)
        raise NotImplementedError(f"the scene-state oracle cannot judge {task!r}")


class ReplayAgent:
    """Replays an episode's recorded actions (gripper scaled to +-0.5), then holds still."""

    def __init__(self, episode: RecordedEpisode):
        self.episode = episode
        self.step = 0
        self.reset_calls = 0
        self.instructions: list[str] = []

    def reset(self) -> None:
        self.reset_calls += 1

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        self.instructions.append(instruction)
        actions = self.episode.rel_actions
        action = actions[min(self.step, len(actions) - 1)].astype(np.float32)
        if self.step >= len(actions):
            action[:6] = 0.0
        action[6] *= 0.5
        self.step += 1
        return action


def make_playback_simulator(**settings):
    """Strict playback of the recorded episodes (actions must match), with the scene-state oracle."""
    return PlaybackSimulator(load_recorded_episodes(), check_actions=True), SceneStateOracle()


def make_lenient_playback_simulator(**settings):
    """Playback that accepts any action (for runs with arbitrary policies)."""
    return PlaybackSimulator(load_recorded_episodes(), check_actions=False), SceneStateOracle()


def make_forbidden_simulator(**settings):
    raise AssertionError("the simulator must not be built in this test")


def save_random_act_checkpoint(path: Path, camera_keys: tuple[str, ...] = ("static", "gripper")) -> Path:
    """A tiny ACT policy with random weights and its processors, saved like a training checkpoint."""
    import torch
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies import make_pre_post_processors
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    shapes = {"static": (3, 200, 200), "gripper": (3, 84, 84)}
    cameras = {
        f"observation.images.{k}": PolicyFeature(FeatureType.VISUAL, shapes.get(k, (3, 200, 200)))
        for k in camera_keys
    }
    config = ACTConfig(
        pretrained_backbone_weights=None,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        use_vae=False,
        chunk_size=100,  # one forward pass per instruction at most: the backbone dominates CPU time
        n_action_steps=100,
        device="cpu",
        push_to_hub=False,
        input_features={**cameras, "observation.state": PolicyFeature(FeatureType.STATE, (15,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (7,))},
    )
    torch.manual_seed(0)
    policy = ACTPolicy(config)
    stats = {
        "observation.state": {"mean": torch.zeros(15), "std": torch.ones(15)},
        "action": {"mean": torch.zeros(7), "std": torch.ones(7)},
        **{key: {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)} for key in cameras},
    }
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=stats)
    for part in (policy, preprocessor, postprocessor):
        part.save_pretrained(path)
    return path


def write_sequences_file(path: Path, sequences: list[CalvinSequence]) -> Path:
    """``sequences`` in the JSON layout of CALVIN's standard sequences file."""
    path.write_text(json.dumps([[s.initial_condition, list(s.tasks)] for s in sequences]))
    return path
