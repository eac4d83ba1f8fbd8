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
import json
import logging
import sys
import time
from pathlib import Path

from lerobot.utils.import_utils import register_third_party_plugins
from lerobot.utils.utils import init_logging
from tqdm import tqdm

from lerobot_defi.command_line import CommandLineError, parse_lerobot_command_line, parse_or_exit
from lerobot_defi.envs.calvin import CalvinEnv
from lerobot_defi.envs.calvin_benchmark_config import PROTOCOL_KEYS, CalvinBenchmarkConfig
from lerobot_defi.envs.calvin_metrics import chain_success_rates, format_summary, summarize
from lerobot_defi.envs.calvin_sequence_runner import (
    SequenceResult,
    run_in_process,
    run_in_workers,
)
from lerobot_defi.envs.calvin_simulator import (
    CALVIN_ENV_INSTALL_HINT,
    CalvinDatasetDirError,
    CalvinEnvNotInstalledError,
    calvin_env_available,
    calvin_env_package_dir,
    check_dataset_dir,
)
from lerobot_defi.envs.configuration_calvin import PolicyEnvMismatchError

logger = logging.getLogger(__name__)


class ResumeMismatchError(ValueError):
    """``--resume`` on a run made with other settings (the message lists them)."""


PROG = "lerobot-defi-eval-calvin"
RESULTS_FILE = "results.json"
SEQUENCES_FILE = "sequences.jsonl"
RUN_CONFIG_FILE = "run_config.json"


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
        raise CommandLineError(
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
        raise CommandLineError(
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` (without the program name) defaults to the command line. A bad option or
    setup (simulator missing, a bad folder, a resume that does not match) is one ``error:`` line, exit status 2."""
    register_third_party_plugins()  # before the log is set up: its line about loading this plugin is noise here
    init_logging()
    cfg = parse_or_exit(CalvinBenchmarkConfig, argv, PROG, parse=parse_lerobot_command_line)
    try:
        run_benchmark(cfg)
    except (
        CommandLineError,
        CalvinEnvNotInstalledError,
        CalvinDatasetDirError,
        PolicyEnvMismatchError,
        ResumeMismatchError,
        FileExistsError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
