"""``lerobot-defi-record-calvin``: demonstrations of the scripted CALVIN expert -> LeRobotDataset.

Each episode: a start drawn with a seed from CALVIN's initial conditions in which the task can be done
(:func:`~lerobot_defi.envs.calvin_task_starts.draw_task_start`: robot at its home pose plus joint noise),
then the expert's skill for that one task (:mod:`~lerobot_defi.envs.calvin_expert`) in the real simulator.
An episode is kept only when CALVIN's task oracle confirms the task; it is cut ``frames_after_success``
frames after the oracle's success step. Its instruction is one of CALVIN's *training* annotation sentences for
the task, drawn with the episode's seed (the evaluation sentence is never used).

Frame ``t`` holds the observation before step ``t`` and the expert's action at that observation (CALVIN's
relative action, gripper exactly -1/1). With perturbations on, the executed action is the expert's action plus
a burst of noise now and then, while the recorded action stays the expert's: the data then shows the expert
correcting the drift (DART-style recoveries).

The dataset has exactly the features of ``lerobot-defi-convert calvin`` (cameras as videos,
``observation.state`` = robot_obs, ``observation.environment_state`` = scene_obs, ``action``, ``calvin_scene``
= 3 (scene D), ``calvin_split`` = 0, ``calvin_frame`` = the step within the episode), so a policy trained on it
runs in ``lerobot-eval --env.type=calvin`` unchanged. ``--camera_size=N`` renders both cameras at N x N
(``--env.camera_size=N`` serves the same images in evaluation); ``--use_videos=false`` stores PNG frames.

Episodes are simulated by ``num_workers`` processes (never in the writing process) and written in a fixed order;
each is played in a freshly built simulator, so it depends only on its task, seed and the options, not on which
worker played it or what that worker played before. An interrupted run resumes (``episode_writer``). Failed
attempts are retried with the next seeds of that task until ``episodes_per_task`` are kept or
``max_attempts_per_task`` are spent.
``meta/calvin_recording.json`` reports the attempts, kept episodes and the expert's success rate per task.

Example::

    lerobot-defi-record-calvin --repo_id=me/calvin_expert --root=outputs/calvin_expert \\
        --tasks='[open_drawer,close_drawer,turn_on_led]' --episodes_per_task=50 --num_workers=8
"""

import functools
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.envs.calvin_expert import SKILLS, CartesianDriver, SceneView
from lerobot_defi.envs.calvin_instructions import training_instructions
from lerobot_defi.envs.calvin_simulator import reset_for_episode
from lerobot_defi.envs.calvin_task_starts import DEFAULT_HOME_JOINT_NOISE, TASK_PRECONDITIONS, draw_task_start

logger = logging.getLogger(__name__)

RECORDING_REPORT_FILE = "calvin_recording.json"
RECORDING_OPTIONS_FILE = "calvin_recording_options.json"
RECORDED_EPISODES_LOG = "calvin_recorded_episodes.jsonl"
SCENE_D = 3  # calvin_scene feature: scenes A..D are 0..3
FPS = 30
RECORDABLE_TASKS = tuple(task for task in TASK_PRECONDITIONS if task in SKILLS)


@dataclass
class PerturbationConfig:
    """Noise bursts on the executed action (the recorded action stays the expert's)."""

    # Probability, at each step outside a burst, that a burst starts (0 disables perturbations).
    probability: float = 0.0
    # Length of a burst in steps.
    steps: int = 5
    # Size of the constant position offset added during a burst, in CALVIN action units (0.02 m per unit).
    scale: float = 0.5


@dataclass
class RecordCalvinConfig:
    """Options of ``lerobot-defi-record-calvin``."""

    repo_id: str = "local/calvin_expert"
    # Output folder (default: $HF_LEROBOT_HOME/<repo_id>).
    root: str | None = None
    # CALVIN tasks to record (default: every task the expert can do from an initial condition).
    tasks: list[str] = field(default_factory=lambda: list(RECORDABLE_TASKS))
    episodes_per_task: int = 20
    # Attempts per task before giving up on reaching episodes_per_task (default: 2 x episodes_per_task + 10).
    max_attempts_per_task: int | None = None
    # Seed of the first attempt of every task; attempt k uses seed + k.
    seed: int = 0
    # Simulator processes (one simulator each); the main process writes the dataset.
    num_workers: int = 1
    # "auto" (EGL if an EGL library exists), "egl", or "tiny" (PyBullet's CPU TinyRenderer).
    renderer: str = "auto"
    # Render both cameras at camera_size x camera_size (None: CALVIN's 200x200 static and 84x84 gripper).
    camera_size: int | None = None
    # Cameras as videos (the converter's format, small on disk) or as PNG frames (false: larger, much faster to
    # read in training: no video decoding).
    use_videos: bool = True
    # Standard deviation of the noise on the home pose's arm joints (rad).
    home_joint_noise: float = DEFAULT_HOME_JOINT_NOISE
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    # Frames kept after the oracle's success step.
    frames_after_success: int = 5
    # An attempt not solved within this many steps is discarded.
    max_episode_steps: int = 240
    overwrite: bool = False
    push_to_hub: bool = False
    private: bool = False

    def __post_init__(self):
        unknown = [task for task in self.tasks if task not in RECORDABLE_TASKS]
        if unknown:
            raise ValueError(
                f"--tasks: the expert has no skill for {unknown}; recordable tasks: {', '.join(RECORDABLE_TASKS)}"
            )
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"--tasks must be a non-empty list without repeats, got {self.tasks}")
        if self.episodes_per_task < 1:
            raise ValueError(f"--episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.max_attempts_per_task is None:
            self.max_attempts_per_task = 2 * self.episodes_per_task + 10
        if self.max_attempts_per_task < self.episodes_per_task:
            raise ValueError(
                f"--max_attempts_per_task must be >= --episodes_per_task ({self.episodes_per_task}), got {self.max_attempts_per_task}"
            )
        if self.camera_size is not None and self.camera_size < 8:
            raise ValueError(f"--camera_size must be >= 8 pixels, got {self.camera_size}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.num_workers < 1:
            raise ValueError(f"--num_workers (simulator processes) must be >= 1, got {self.num_workers}")


@dataclass(frozen=True)
class EpisodeOptions:
    """What a simulator worker needs to play one attempt (picklable)."""

    renderer: str
    camera_size: int | None
    home_joint_noise: float
    perturbation: PerturbationConfig
    frames_after_success: int
    max_episode_steps: int


def recording_features(camera_size: int | None) -> dict[str, dict]:
    """The features of ``lerobot-defi-convert calvin`` (cameras resized to ``camera_size`` when given)."""
    from lerobot_defi.conversions.calvin_format import ReadOptions, features

    out = features(ReadOptions())
    if camera_size is not None:
        for key in ("observation.images.static", "observation.images.gripper"):
            out[key] = {**out[key], "shape": (camera_size, camera_size, 3)}
    return out


_WORKER_ORACLE: list = []


def _fresh_simulator(renderer: str, camera_size: int | None):
    """A newly built simulator for one episode (~1-2 s) and CALVIN's task oracle (built once per process).

    Fresh, because calvin_env's reset keeps traces of the episode before (the block velocities, the button's
    and the inverse kinematics' state: measured up to 3e-4 in the robot state of the next episode); a rebuilt
    simulator makes an episode depend only on its task, seed and the options, whichever worker plays it and
    whatever it played before, so a resumed or parallel recording gives the same dataset."""
    from lerobot_defi.envs.calvin_simulator import build_calvin_simulator

    simulator, oracle = build_calvin_simulator(renderer=renderer, camera_size=camera_size)
    if not _WORKER_ORACLE:
        _WORKER_ORACLE.append(oracle)
    return simulator, _WORKER_ORACLE[0]


def play_episode(options: EpisodeOptions, attempt: tuple[str, int]):
    """Simulate one attempt ``(task, seed)``; the episode's frames, or ``SkipEpisode`` when the oracle does not
    confirm the task within ``max_episode_steps`` (runs in a simulator worker)."""
    task, seed = attempt
    simulator, oracle = _fresh_simulator(options.renderer, options.camera_size)
    try:
        return _play(simulator, oracle, options, task, seed)
    finally:
        simulator.close()
        simulator.cid = -1  # calvin_env's __del__ would disconnect a second time


def _play(simulator, oracle, options: EpisodeOptions, task: str, seed: int):
    from lerobot_defi.conversions.conversion_errors import SkipEpisode
    from lerobot_defi.conversions.episode_writer import EpisodeFrames

    start = draw_task_start(task, seed, purpose="record", home_joint_noise=options.home_joint_noise)
    observation = reset_for_episode(simulator, start.robot_obs, start.scene_obs)
    start_info = simulator.get_info()
    driver = CartesianDriver(SceneView(simulator))
    skill = SKILLS[task](driver)
    rng = np.random.default_rng([seed, 7])
    perturbation = options.perturbation
    burst_left, burst = 0, np.zeros(3)
    frames: list[tuple[dict, np.ndarray]] = []
    success_step = None
    for step in range(options.max_episode_steps):
        action = next(skill, None)
        if action is None:  # the skill is over: hold still with the gripper as it is
            action = np.array([0, 0, 0, 0, 0, 0, driver.gripper], dtype=float)
            if success_step is None:
                break
        executed = action.copy()
        if burst_left == 0 and perturbation.probability > 0 and rng.random() < perturbation.probability:
            direction = rng.normal(size=3)
            burst = perturbation.scale * direction / np.linalg.norm(direction)
            burst_left = perturbation.steps
        if burst_left > 0:
            executed[:3] += burst
            burst_left -= 1
        executed[:6] = np.clip(executed[:6], -1.0, 1.0)
        frames.append((observation, action))
        observation, _, _, info = simulator.step(executed)
        if success_step is None and task in oracle.get_task_info_for_set(start_info, info, {task}):
            success_step = step
        if success_step is not None and step >= success_step + options.frames_after_success - 1:
            break
    if success_step is None:
        raise SkipEpisode(f"the expert did not solve {task} within {len(frames)} steps (seed {seed})")

    sentences = training_instructions()[task]
    sentence = sentences[int(np.random.default_rng([seed, 11]).integers(len(sentences)))]
    n = len(frames)
    episode = {  # cameras as rendered (at camera_size when given); PyBullet hands back integer arrays
        "observation.images.static": np.stack([o["rgb_obs"]["rgb_static"] for o, _ in frames]).astype(
            np.uint8
        ),
        "observation.images.gripper": np.stack([o["rgb_obs"]["rgb_gripper"] for o, _ in frames]).astype(
            np.uint8
        ),
        "observation.state": np.stack([o["robot_obs"] for o, _ in frames]).astype(np.float32),
        "observation.environment_state": np.stack([o["scene_obs"] for o, _ in frames]).astype(np.float32),
        "action": np.stack([a for _, a in frames]).astype(np.float32),
        "calvin_scene": np.full((n, 1), SCENE_D, dtype=np.int64),
        "calvin_split": np.zeros((n, 1), dtype=np.int64),
        "calvin_frame": np.arange(n, dtype=np.int64)[:, None],
        "task": [sentence] * n,
    }
    extra = {
        "task": task,
        "seed": seed,
        "instruction": sentence,
        "success_step": success_step,
        "length": n,
        "initial_condition": start.condition,
    }
    return EpisodeFrames(episode, extra=extra)


def _attempt_key(task: str, seed: int) -> str:
    return f"{task}/{seed:06d}"


def _task_of(key: str) -> str:
    return key.split("/")[0]


def record_calvin(config: RecordCalvinConfig, progress: bool = True) -> Path:
    """Record the dataset described by ``config``; returns its root. Resumes an interrupted run."""
    import shutil

    from lerobot.utils.constants import HF_LEROBOT_HOME

    from lerobot_defi.conversions.episode_writer import write_episodes

    root = Path(config.root) if config.root is not None else HF_LEROBOT_HOME / config.repo_id
    if config.overwrite:
        shutil.rmtree(root, ignore_errors=True)
    options = _recorded_options(config)
    options_path = root / "meta" / RECORDING_OPTIONS_FILE
    if options_path.is_file():
        previous = json.loads(options_path.read_text())
        changed = sorted(k for k in set(options) | set(previous) if previous.get(k) != options.get(k))
        if changed:
            raise ValueError(
                f"{root} was recorded with other options ({', '.join(changed)}); resuming would mix them: use "
                "another --root or pass --overwrite=true"
            )
    episode_options = EpisodeOptions(
        renderer=config.renderer,
        camera_size=config.camera_size,
        home_joint_noise=config.home_joint_noise,
        perturbation=config.perturbation,
        frames_after_success=config.frames_after_success,
        max_episode_steps=config.max_episode_steps,
    )
    episodes_log = root / "meta" / RECORDED_EPISODES_LOG
    kept: Counter = Counter()
    tried: Counter = Counter()

    def on_result(key: str, outcome: str, episode) -> str:
        if not options_path.is_file():  # the dataset exists now: record what it is made of
            options_path.write_text(json.dumps(options, indent=1))
        task = _task_of(key)
        tried[task] += 1
        if outcome == "saved":
            kept[task] += 1
            with open(episodes_log, "a") as log:
                log.write(json.dumps({"key": key, **episode.extra}) + "\n")
        rates = {t: kept[t] / tried[t] for t in tried}
        lowest = min(rates, key=rates.get)
        return (
            f"kept {sum(kept.values())}/{sum(tried.values())}, expert success per task >= "
            f"{rates[lowest]:.0%} ({lowest})"
        )

    while True:
        state = _progress_state(root) or {"episodes": [], "skipped": {}}
        kept = Counter(_task_of(key) for key in state["episodes"])
        tried = kept + Counter(_task_of(key) for key in state.get("skipped", {}))
        items = []
        for task in config.tasks:
            planned = min(config.episodes_per_task - kept[task], config.max_attempts_per_task - tried[task])
            seeds = range(config.seed + tried[task], config.seed + tried[task] + max(0, planned))
            items += [(_attempt_key(task, seed), (task, seed)) for seed in seeds]
        if not items:
            break
        items.sort(key=lambda item: (item[1][1], config.tasks.index(item[1][0])))
        write_episodes(
            repo_id=config.repo_id,
            root=root,
            fps=FPS,
            features=recording_features(config.camera_size),
            items=items,
            read_episode=functools.partial(play_episode, episode_options),
            robot_type="franka_calvin",
            num_workers=config.num_workers,
            checkpoint_every=200,
            video_files_size_in_mb=20,
            progress=progress,
            description="record calvin",
            on_result=on_result,
            use_videos=config.use_videos,
        )
    _write_report(root, config, options)
    if config.push_to_hub:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        LeRobotDataset(config.repo_id, root=root).push_to_hub(private=config.private)
    return root


def _progress_state(root: Path) -> dict | None:
    from lerobot_defi.conversions.conversion_progress import PROGRESS_FILE

    path = root / PROGRESS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _recorded_options(config: RecordCalvinConfig) -> dict:
    """The options that decide the episodes' content (they must match when a recording is resumed)."""
    options = asdict(config)
    for key in ("repo_id", "root", "num_workers", "overwrite", "push_to_hub", "private"):
        options.pop(key)
    for key in ("tasks", "episodes_per_task", "max_attempts_per_task"):  # how many, not what: may grow
        options.pop(key)
    return options


def _write_report(root: Path, config: RecordCalvinConfig, options: dict) -> dict:
    """``meta/calvin_recording.json``: options, per-task attempts / kept / expert success rate, every episode."""
    state = _progress_state(root)
    logged = {}
    episodes_log = root / "meta" / RECORDED_EPISODES_LOG
    if episodes_log.is_file():
        for line in episodes_log.read_text().splitlines():
            entry = json.loads(line)
            logged[entry["key"]] = entry
    episodes = [{"episode_index": index, **logged[key]} for index, key in enumerate(state["episodes"])]
    failures = state.get("skipped", {})
    per_task = {}
    for task in config.tasks:
        lengths = [e["length"] for e in episodes if e["task"] == task]
        failed = sum(1 for key in failures if _task_of(key) == task)
        per_task[task] = {
            "attempts": len(lengths) + failed,
            "kept": len(lengths),
            "expert_success_rate": len(lengths) / max(1, len(lengths) + failed),
            "mean_length": float(np.mean(lengths)) if lengths else None,
        }
    report = {
        "options": {
            **options,
            "tasks": list(config.tasks),
            "episodes_per_task": config.episodes_per_task,
            "max_attempts_per_task": config.max_attempts_per_task,
        },
        "tasks": per_task,
        "total_episodes": len(episodes),
        "episodes": episodes,
        "failures": failures,
    }
    (root / "meta" / RECORDING_REPORT_FILE).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` (without the program name) defaults to the command line. A bad option is one
    ``error:`` line and exit status 2; fewer episodes than asked for after every attempt is exit status 1."""
    from lerobot.utils.utils import init_logging

    init_logging()
    config = parse_or_exit(RecordCalvinConfig, argv, "lerobot-defi-record-calvin")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = record_calvin(config)
    report = json.loads((root / "meta" / RECORDING_REPORT_FILE).read_text())
    print(f"{root}: {report['total_episodes']} episodes")
    for task, entry in report["tasks"].items():
        print(
            f"  {task:28s} kept {entry['kept']:4d} of {entry['attempts']:4d} attempts "
            f"({entry['expert_success_rate']:.0%}), mean length {entry['mean_length'] or 0:.0f} frames"
        )
    short = [t for t, e in report["tasks"].items() if e["kept"] < config.episodes_per_task]
    if short:
        print(
            f"error: fewer than {config.episodes_per_task} episodes for {short} after "
            f"{config.max_attempts_per_task} attempts each (raise --max_attempts_per_task)",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
