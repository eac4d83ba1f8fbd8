"""``lerobot-defi-eval-calvin``: CALVIN's long-horizon benchmark for any LeRobot policy.

    lerobot-defi-eval-calvin --policy.path=<checkpoint or Hub id> --num_sequences=1000 --ep_len=360 \\
        --num_workers=8 --output_dir=outputs/eval_calvin/my_run

The protocol (CALVIN's ``evaluate_policy``): for each of the first ``num_sequences`` standard
sequences (deterministic, seed 0), reset the simulator to the sequence's initial scene state and
give the policy the first instruction; CALVIN's task oracle judges every step; after a success the
policy is reset and gets the next instruction; a task not solved within ``ep_len`` steps ends the
sequence. Reported: success rate of 1..5 tasks in a row, average length, per-task success rates,
and videos of the sequences listed in ``video_sequences``.

Sequences run in ``num_workers`` processes (each with its own simulator and policy copy; on several
GPUs with ``--policy.device=cuda`` the workers are spread over them). Every finished sequence is
appended to ``<output_dir>/sequences.jsonl``; ``--resume=true`` continues an interrupted run from it.
``results.json`` is written only when every sequence has a result.
"""

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lerobot.configs import PreTrainedConfig, parser
from lerobot.utils.import_utils import register_third_party_plugins
from lerobot.utils.utils import init_logging
from tqdm import tqdm

from lerobot_defi.envs.calvin import CalvinEnv
from lerobot_defi.envs.calvin_metrics import chain_success_rates, format_summary, summarize
from lerobot_defi.envs.calvin_sequence_runner import (
    SequenceResult,
    run_in_process,
    run_in_workers,
)
from lerobot_defi.envs.calvin_sequences import STANDARD_SEQUENCES_FILE, SUBTASKS_PER_SEQUENCE
from lerobot_defi.envs.calvin_simulator import (
    CALVIN_ENV_INSTALL_HINT,
    DEFAULT_SCENE,
    CalvinDatasetDirError,
    CalvinEnvNotInstalledError,
    calvin_env_available,
    calvin_env_package_dir,
    check_dataset_dir,
)
from lerobot_defi.envs.configuration_calvin import CalvinEnvConfig, PolicyEnvMismatchError

logger = logging.getLogger(__name__)


class ResumeMismatchError(ValueError):
    """``--resume`` on a run made with other settings (the message lists them)."""


RESULTS_FILE = "results.json"
SEQUENCES_FILE = "sequences.jsonl"
RUN_CONFIG_FILE = "run_config.json"
# Settings that change the numbers: a resumed run must use the same ones.
PROTOCOL_KEYS = (
    "policy",
    "ep_len",
    "sequences_sha256",
    "scene",
    "dataset_dir",
    "renderer",
    "seed",
    "rename_map",
)


@dataclass
class CalvinBenchmarkConfig:
    """Options of ``lerobot-defi-eval-calvin``, in LeRobot's draccus style (``--num_sequences=1000``)."""

    # The policy: --policy.path=<folder or Hub id> (plus --policy.<field> overrides, e.g. --policy.device=cuda),
    # or --policy.type=<type> for random weights (smoke tests).
    policy: PreTrainedConfig | None = None
    num_sequences: int = 1000
    # Steps allowed per instruction: 360 is CALVIN's protocol, 720 what DeFI's evaluation code uses.
    ep_len: int = 360
    num_workers: int = 1
    output_dir: Path | None = None
    # Continue the run found in output_dir (sequences.jsonl) instead of refusing to overwrite it.
    resume: bool = False
    # Indices of the sequences to film (e.g. --video_sequences='[0,1,2]'), written to output_dir/videos.
    video_sequences: list[int] = field(default_factory=list)
    # JSON list of [initial_condition, [task, ...]]; default: the 1000 standard sequences.
    sequences_file: str | None = None
    # CALVIN validation split folder (simulator config + instructions); default: calvin_env's scene config.
    dataset_dir: str | None = None
    scene: str = DEFAULT_SCENE
    renderer: str = "auto"
    # "package.module:function" building (simulator, oracle) instead of calvin_env (see calvin_simulator.py).
    simulator_factory: str | None = None
    # Env key -> policy key, as lerobot-eval's --rename_map.
    rename_map: dict[str, str] = field(default_factory=dict)
    # Torch/numpy seed before sequence i is seed + i, so the policy's random draws do not depend on the worker.
    # The simulator's state does: calvin_env's reset keeps the last gripper command (robot_obs[14]), so a
    # sequence starts from what the sequence before it in its worker left. One worker plays them in order, as
    # CALVIN's own loop does; N workers give each sequence another predecessor.
    seed: int = 0

    def __post_init__(self):
        policy_path = parser.get_path_arg("policy")
        if policy_path:
            overrides = parser.get_yaml_overrides("policy") + (parser.get_cli_overrides("policy") or [])
            self.policy = PreTrainedConfig.from_pretrained(policy_path, cli_overrides=overrides)
            self.policy.pretrained_path = Path(policy_path)
        if self.num_sequences < 1:
            raise ValueError(f"--num_sequences must be >= 1, got {self.num_sequences}")
        if self.ep_len < 1:
            raise ValueError(f"--ep_len must be >= 1, got {self.ep_len}")
        if self.num_workers < 1:
            raise ValueError(f"--num_workers must be >= 1, got {self.num_workers}")

    @classmethod
    def __get_path_fields__(cls) -> list[str]:
        return ["policy"]

    def env_config(self) -> CalvinEnvConfig:
        return CalvinEnvConfig(
            episode_length=self.ep_len,
            subtasks_per_episode=SUBTASKS_PER_SEQUENCE,
            sequences_file=self.sequences_file,
            dataset_dir=self.dataset_dir,
            scene=self.scene,
            renderer=self.renderer,
            simulator_factory=self.simulator_factory,
        )

    def protocol(self) -> dict:
        """The settings that determine the results (compared on resume), JSON-ready."""
        sequences_path = Path(self.sequences_file) if self.sequences_file else STANDARD_SEQUENCES_FILE
        return {
            "policy": str(self.policy.pretrained_path or f"random {self.policy.type}"),
            "policy_type": self.policy.type,
            "ep_len": self.ep_len,
            "sequences_sha256": hashlib.sha256(sequences_path.read_bytes()).hexdigest(),
            "scene": self.scene,
            "dataset_dir": self.dataset_dir,
            "renderer": self.renderer,
            "seed": self.seed,
            "rename_map": dict(self.rename_map),
            "num_sequences": self.num_sequences,
        }


# ---- the run -----------------------------------------------------------------------------------------


def _read_finished(path: Path) -> dict[int, SequenceResult]:
    finished = {}
    if not path.is_file():
        return finished
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            result = SequenceResult(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as error:
            if number == len(lines):  # a run killed mid-write leaves a partial last line
                logger.warning(f"{path}: ignoring the unreadable last line ({error})")
                continue
            raise ValueError(f"{path}, line {number}: not a sequence result ({error})") from None
        finished[result.index] = result
    return finished


def _prepare_output_dir(cfg: CalvinBenchmarkConfig) -> dict[int, SequenceResult]:
    """Create or check ``output_dir``; return the results already there (resume)."""
    output_dir = Path(cfg.output_dir)
    protocol = cfg.protocol()
    run_config_path = output_dir / RUN_CONFIG_FILE
    if run_config_path.is_file():
        if not cfg.resume:
            raise FileExistsError(
                f"{output_dir} already holds a CALVIN evaluation; pass --resume=true to continue it "
                "or choose another --output_dir"
            )
        previous = json.loads(run_config_path.read_text())
        changed = {k: (previous.get(k), protocol[k]) for k in PROTOCOL_KEYS if previous.get(k) != protocol[k]}
        if changed:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ResumeMismatchError(
                f"cannot resume {output_dir}: the evaluation settings differ ({details}); resume with the run's own "
                f"settings (see {run_config_path}) or choose another --output_dir"
            )
    elif cfg.resume:
        logger.warning(f"--resume: {run_config_path} not found, starting a new evaluation")
    output_dir.mkdir(parents=True, exist_ok=True)
    run_config_path.write_text(json.dumps(protocol, indent=2))
    sequences_path = output_dir / SEQUENCES_FILE
    finished = _read_finished(sequences_path)
    if sequences_path.is_file():  # rewrite without a partial last line, so new results append cleanly
        partial = sequences_path.with_suffix(".jsonl.tmp")
        partial.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in finished.values()))
        partial.replace(sequences_path)
    return {i: r for i, r in finished.items() if i < cfg.num_sequences}


def _progress_text(completed: list[int]) -> str:
    rates = chain_success_rates(completed)
    return (
        " ".join(f"{i + 1}/5:{r * 100:.0f}%" for i, r in enumerate(rates))
        + f" avg_len:{sum(completed) / len(completed):.2f}"
    )


def run_benchmark(cfg: CalvinBenchmarkConfig) -> dict:
    """Run (or finish) the evaluation described by ``cfg``; return and write ``results.json``'s content."""
    if cfg.policy is None:
        raise ValueError(
            "no policy: pass --policy.path=<checkpoint folder or Hub id> (or --policy.type=<type>)"
        )
    env_cfg = cfg.env_config()
    env_cfg.validate_policy_features(cfg.policy, cfg.rename_map)  # before any simulator starts
    if cfg.simulator_factory is None:
        if not calvin_env_available():
            raise CalvinEnvNotInstalledError(CALVIN_ENV_INSTALL_HINT)
        calvin_env_package_dir()  # refuses a calvin_env folder that shadows the package
    check_dataset_dir(cfg.dataset_dir, "--dataset_dir")
    probe = CalvinEnv(**env_cfg.gym_kwargs)  # checks sequences and instructions; builds no simulator
    if cfg.num_sequences > len(probe.sequences):
        raise ValueError(
            f"--num_sequences={cfg.num_sequences} but only {len(probe.sequences)} sequences exist"
        )
    if cfg.output_dir is None:
        now = dt.datetime.now()
        cfg.output_dir = (
            Path("outputs/eval_calvin")
            / f"{now:%Y-%m-%d}"
            / f"{now:%H-%M-%S}_{cfg.policy.type}_ep{cfg.ep_len}"
        )
    finished = _prepare_output_dir(cfg)
    todo = [i for i in range(cfg.num_sequences) if i not in finished]
    logger.info(
        f"CALVIN long-horizon evaluation: {cfg.num_sequences} sequences, ep_len {cfg.ep_len}, "
        f"{len(finished)} already done, {len(todo)} to run with {cfg.num_workers} worker(s) -> {cfg.output_dir}"
    )
    start = time.perf_counter()
    if todo:
        runner = run_in_process(cfg, todo) if cfg.num_workers == 1 else run_in_workers(cfg, todo)
        with (
            open(Path(cfg.output_dir) / SEQUENCES_FILE, "a") as log,
            tqdm(total=len(todo), desc="CALVIN sequences") as bar,
        ):
            for result in runner:
                log.write(json.dumps(dataclasses.asdict(result)) + "\n")
                log.flush()
                finished[result.index] = result
                bar.set_postfix_str(_progress_text([r.completed for r in finished.values()]))
                bar.update()
    ordered = [finished[i] for i in range(cfg.num_sequences)]
    summary = summarize([r.tasks for r in ordered], [r.completed for r in ordered])
    env_steps = sum(r.env_steps for r in ordered)
    sim_seconds = sum(r.sim_seconds for r in ordered)
    summary.update(
        {
            "protocol": cfg.protocol(),
            "env_steps": env_steps,
            "sim_steps_per_second": env_steps / sim_seconds if sim_seconds > 0 else None,
            "policy_seconds_per_step": sum(r.policy_seconds for r in ordered) / max(env_steps, 1),
            "wall_seconds_this_run": time.perf_counter() - start,
            "videos": [r.video for r in ordered if r.video],
        }
    )
    (Path(cfg.output_dir) / RESULTS_FILE).write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"Results: {Path(cfg.output_dir) / RESULTS_FILE}")
    return summary


@parser.wrap()
def _main(cfg: CalvinBenchmarkConfig) -> dict:
    return run_benchmark(cfg)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` (without the program name) defaults to the command line."""
    init_logging()
    register_third_party_plugins()
    saved_argv = sys.argv
    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    try:
        _main()
    except (
        CalvinEnvNotInstalledError,
        CalvinDatasetDirError,
        PolicyEnvMismatchError,
        ResumeMismatchError,
        FileExistsError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    main()
