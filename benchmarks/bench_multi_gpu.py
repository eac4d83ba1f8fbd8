"""Multi-GPU scaling of the three DeFI trainings, launched the way users launch them (``accelerate launch``).

Components: ``policy`` (``lerobot-train --policy.type=defi``), ``gfdm`` (``lerobot-defi-train-gfdm``) and
``gidm`` (``lerobot-defi-train-gidm``), all on one LeRobotDataset converted from CALVIN frames (the repository's
test slice unless ``--dataset_root`` is given). For every component and every process count N of
``--processes``:

* ``same-global``: N processes x (global batch / N), the 1-process run's global batch, so its loss curve is
  compared with the 1-process curve step by step (a paired test: the mean per-step difference must lie within
  3 standard errors of zero, or all differences below 1e-3 relative);
* ``weak`` (with ``--weak=true``): N processes x the global batch each; samples/s over N x the 1-process
  samples/s is the scaling efficiency;
* on the largest N a resume check: the run continues from its last checkpoint with ``--resume=true`` for
  ``--resume_steps`` more steps and must log exactly the steps after the saved one.

Samples/s: median over the logged steps after the first ``--warmup`` (worker start-up, cuDNN autotuning).
``--size=official`` builds the official architectures with random weights (no download); ``tiny`` the test
presets (mechanics only: their throughput says nothing about scaling). Runs' logs stay under ``--work_dir``.
Prints one table; ``--out`` writes JSON, rewritten after every run so a cut-off job keeps what it measured.

    python benchmarks/bench_multi_gpu.py --size=official --components='[gidm]' --processes='[1,2]' --weak=true
    python benchmarks/bench_multi_gpu.py --size=tiny --components='[policy,gfdm,gidm]'             # 2 GPUs
    python benchmarks/bench_multi_gpu.py --cpu=true --size=tiny --components='[gidm]' --steps=6    # CPU, gloo
"""

import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from lerobot_defi.command_line import parse_or_exit

REPO = Path(__file__).resolve().parents[1]
CALVIN_SLICE = REPO / "tests" / "data" / "calvin_mini_slice" / "training"
DATASET_ID = "local/calvin_bench"
CAMERAS = ["static", "gripper"]


@dataclass
class RunResult:
    component: str
    kind: str  # "same-global" | "weak" | "resume"
    processes: int
    batch_per_process: int
    global_batch: int
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    samples_per_s: float | None = None
    seconds: float = 0.0
    ok: bool = False
    error: str | None = None
    log: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Log parsing and comparison (pure functions, unit-tested)
# ----------------------------------------------------------------------------------------------------------------
LEROBOT_LINE = re.compile(
    r"step:(?P<step>\d+)\s.*?loss:(?P<loss>[-0-9.e+]+)\s.*?updt_s:(?P<updt>[0-9.e+-]+)\s+data_s:(?P<data>[0-9.e+-]+)"
)


def parse_lerobot_log(text: str, global_batch: int) -> tuple[list[int], list[float], list[float]]:
    """``lerobot-train`` output (``--log_freq=1``) -> steps, losses, samples/s per step (global batch over
    update + data-wait time of the main process)."""
    steps, losses, rates = [], [], []
    for match in LEROBOT_LINE.finditer(text):
        steps.append(int(match["step"]))
        losses.append(float(match["loss"]))
        seconds = float(match["updt"]) + float(match["data"])
        rates.append(global_batch / seconds if seconds > 0 else math.nan)
    return steps, losses, rates


def parse_metrics_jsonl(path: Path) -> tuple[list[int], list[float], list[float]]:
    """A pretraining run's ``metrics.jsonl`` -> steps, losses, samples/s of its training lines."""
    steps, losses, rates = [], [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "samples_per_s" in record:
            steps.append(int(record["step"]))
            losses.append(float(record["loss"]))
            rates.append(float(record["samples_per_s"]))
    return steps, losses, rates


ERROR_LINE = re.compile(r"^\S*(Error|Exception)\b.*$", re.MULTILINE)


def error_summary(text: str) -> str:
    """The last ``SomethingError: message`` line of a failed run's output, not the launcher's own
    ``ChildFailedError`` (else the output's last line)."""
    errors = [m.group(0) for m in ERROR_LINE.finditer(text) if "ChildFailedError" not in m.group(0)]
    if errors:
        return errors[-1].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def median_rate(rates: list[float], warmup: int) -> float | None:
    kept = [r for r in rates[warmup:] if math.isfinite(r)]
    return statistics.median(kept) if kept else None


def compare_curves(reference: list[float], other: list[float]) -> dict:
    """Paired comparison of two loss curves over their common steps.

    ``match``: every per-step difference is below 1e-3 relative (same numbers up to reduction order), or the
    mean difference lies within 3 standard errors of zero (same distribution: the runs differ only in noise).
    """
    n = min(len(reference), len(other))
    if n < 2:
        return {"steps": n, "match": False, "reason": "fewer than 2 common steps"}
    diffs = [b - a for a, b in zip(reference[:n], other[:n])]
    relative = max(abs(d) / max(abs(a), 1e-12) for a, d in zip(reference, diffs))
    mean = statistics.fmean(diffs)
    stderr = statistics.stdev(diffs) / math.sqrt(n)
    match = relative < 1e-3 or abs(mean) <= 3 * stderr
    return {
        "steps": n,
        "mean_loss_reference": statistics.fmean(reference[:n]),
        "mean_loss_other": statistics.fmean(other[:n]),
        "mean_difference": mean,
        "standard_error": stderr,
        "max_relative_difference": relative,
        "match": match,
    }


# ----------------------------------------------------------------------------------------------------------------
# Data and configs
# ----------------------------------------------------------------------------------------------------------------
def ensure_dataset(work_dir: Path, dataset_root: Path | None) -> Path:
    if dataset_root is not None:
        if not (dataset_root / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"{dataset_root} is not a LeRobotDataset (no meta/info.json)")
        return dataset_root
    root = work_dir / "calvin_dataset"
    if (root / "meta" / "info.json").is_file():
        return root
    if not CALVIN_SLICE.is_dir():
        raise FileNotFoundError(f"no --dataset_root and no CALVIN test slice at {CALVIN_SLICE}")
    from lerobot_defi.conversions.calvin import convert_calvin

    shutil.rmtree(root, ignore_errors=True)
    return Path(convert_calvin(CALVIN_SLICE, DATASET_ID, root=root))


def write_presets(work_dir: Path, size: str) -> dict[str, Path]:
    """The three training presets as YAML files: the shipped tiny ones, or the official recipes with random
    official-size networks (no Hub access)."""
    from lerobot_defi.models.reference_architectures import (
        DINOV2_BASE_REG,
        T5_BASE,
        official_random_config_overrides,
    )

    presets = REPO / "configs"
    if size == "tiny":
        return {name: presets / f"{name}_tiny.yaml" for name in ("gfdm", "gidm")} | {
            "policy": presets / "defi_tiny.yaml"
        }
    overrides = official_random_config_overrides()
    policy = yaml.safe_load((presets / "defi_calvin.yaml").read_text())
    policy["policy"] |= overrides
    policy["policy"]["gfdm_dtype"] = "bfloat16"
    gfdm = yaml.safe_load((presets / "gfdm_official.yaml").read_text())
    gfdm.pop("datasets", None)
    gfdm["model"] |= {
        "pretrained_path": None,
        "unet_config": overrides["gfdm_unet_config"],
        "vae_config": overrides["gfdm_vae_config"],
        "clip_text_path": None,
        "clip_text_config": overrides["clip_text_config"],
        "frozen_dtype": "bfloat16",
    }
    gfdm["mixed_precision"] = "bf16"
    gidm = yaml.safe_load((presets / "gidm_official.yaml").read_text())
    gidm.pop("datasets", None)
    gidm |= {"dinov2_path": None, "dinov2_config": DINOV2_BASE_REG, "t5_path": None, "t5_config": T5_BASE}
    paths = {}
    for name, content in (("policy", policy), ("gfdm", gfdm), ("gidm", gidm)):
        paths[name] = work_dir / f"{name}_official_random.yaml"
        paths[name].write_text(yaml.safe_dump(content, sort_keys=False))
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Launching
# ----------------------------------------------------------------------------------------------------------------
MODULES = {
    "policy": "lerobot.scripts.lerobot_train",
    "gfdm": "lerobot_defi.pretrain.train_gfdm",
    "gidm": "lerobot_defi.pretrain.train_gidm",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(processes: int, cpu: bool) -> list[str]:
    """``accelerate launch`` on GPUs; ``torchrun`` on the CPU (``accelerate launch --cpu`` starts one process)."""
    if cpu:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(free_port())]  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    command += ["--num_processes", str(processes), "--main_process_port", str(free_port())]
    command += ["--dynamo_backend", "no", "--mixed_precision", "no"]
    if processes > 1:
        command.append("--multi_gpu")
    return command


def component_args(
    component: str, preset: Path, dataset: Path, output: Path, steps: int, batch: int, args
) -> list[str]:
    save_at = max(1, steps // 2) if component != "policy" else steps
    if component == "policy":
        return [
            f"--config_path={preset}",
            f"--dataset.repo_id={DATASET_ID}",
            f"--dataset.root={dataset}",
            "--dataset.video_backend=pyav",
            f"--output_dir={output}",
            f"--steps={steps}",
            f"--batch_size={batch}",
            "--log_freq=1",
            f"--save_freq={save_at}",
            f"--num_workers={args.num_workers}",
            f"--policy.device={'cpu' if args.cpu else 'cuda'}",
            "--policy.binarize_gripper=false",
            f"--seed={args.seed}",
        ]
    source = {"repo_id": DATASET_ID, "root": str(dataset), "video_backend": "pyav"}
    common = [
        f"--config_path={preset}",
        f"--output_dir={output}",
        f"--steps={steps}",
        f"--batch_size={batch}",
        "--log_every=1",
        f"--save_every={save_at}",
        f"--num_workers={args.num_workers}",
        f"--seed={args.seed}",
    ]
    if component == "gfdm":
        source |= {"cameras": CAMERAS, "camera_weights": [0.75, 0.25]}
        return [*common, f"--datasets={json.dumps([source])}", "--val_every=1000000", "--val_first_step=null",
                "--sample_videos.num_videos=0"]  # fmt: skip
    source |= {"gap": 3}
    return [*common, f"--datasets={json.dumps([source])}", "--eval_every=1000000", "--inspect_pairs=0",
            "--model.tiled_padding_mask=false"]  # fmt: skip


def run_training(
    component: str, command: list[str], output: Path, result: RunResult, timeout: float, cpu: bool
):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "HF_LEROBOT_HOME": str(output.parent / "lerobot_home"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if cpu:
        env["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        text, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        text = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        text += (error.stderr or b"").decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
        code = f"timeout after {timeout:.0f} s"
    result.seconds = time.perf_counter() - started
    output.mkdir(parents=True, exist_ok=True)
    (output.parent / f"{output.name}.log").write_text(text)
    result.log = str(output.parent / f"{output.name}.log")
    if component == "policy":
        steps, losses, rates = parse_lerobot_log(text, result.global_batch)
    elif (output / "metrics.jsonl").is_file():
        steps, losses, rates = parse_metrics_jsonl(output / "metrics.jsonl")
    else:
        steps, losses, rates = [], [], []
    result.steps, result.losses = steps, losses
    if code != 0:
        result.error = f"exit {code}: {error_summary(text)}"
    return rates


def checkpoint_ok(component: str, output: Path) -> bool:
    if component == "policy":
        return (output / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    return (output / "checkpoints" / "last" / "training_state.json").is_file()


def resume_command(component: str, output: Path, steps: int, base: list[str], launch: list[str]) -> list[str]:
    if component == "policy":
        config = output / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
        return [
            *launch,
            "-m",
            MODULES[component],
            f"--config_path={config}",
            "--resume=true",
            f"--steps={steps}",
        ]
    kept = [a for a in base if not a.startswith("--steps=")]
    return [*launch, "-m", MODULES[component], *kept, f"--steps={steps}", "--resume=true"]


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------
def benchmark(args) -> dict:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dataset = ensure_dataset(work, Path(args.dataset_root).resolve() if args.dataset_root else None)
    presets = write_presets(work, args.size)
    report = {"size": args.size, "device": "cpu" if args.cpu else "cuda", "runs": [], "summary": {}}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))

    processes = sorted(set(args.processes))
    global_batches = args.global_batches()
    for component in args.components:
        batch = global_batches[component]
        plan = [(n, "same-global", batch // n) for n in processes]
        if args.weak:
            plan += [(n, "weak", batch) for n in processes if n > 1]
        runs: dict[tuple[int, str], RunResult] = {}
        for n, kind, per_process in plan:
            if per_process < 1 or batch % n:
                continue
            output = work / f"{component}_{kind}_{n}"
            shutil.rmtree(output, ignore_errors=True)
            result = RunResult(component, kind, n, per_process, per_process * n)
            base = component_args(
                component, presets[component], dataset, output, args.steps, per_process, args
            )
            command = [*launcher(n, args.cpu), "-m", MODULES[component], *base]
            print(f"[{component}] {kind}: {n} process(es) x batch {per_process}", flush=True)
            rates = run_training(component, command, output, result, args.timeout, args.cpu)
            result.samples_per_s = median_rate(rates, args.warmup)
            result.ok = (
                result.error is None and len(result.losses) >= args.steps and checkpoint_ok(component, output)
            )
            runs[(n, kind)] = result
            report["runs"].append(asdict(result))
            save()
            if kind == "same-global" and n == processes[-1] and n > 1 and result.ok and args.resume_steps:
                resumed = RunResult(component, "resume", n, per_process, per_process * n)
                total = args.steps + args.resume_steps
                command = resume_command(component, output, total, base, launcher(n, args.cpu))
                print(f"[{component}] resume: {n} process(es) -> step {total}", flush=True)
                rates = run_training(component, command, output, resumed, args.timeout, args.cpu)
                # lerobot-train's log is the resumed process's output; metrics.jsonl holds the whole run
                first = args.steps + 1 if component == "policy" else 1
                resumed.ok = resumed.error is None and resumed.steps == list(range(first, total + 1))
                if not resumed.ok and resumed.error is None:
                    resumed.error = f"logged steps after resuming: {resumed.steps}, expected {first}..{total}"
                resumed.samples_per_s = median_rate(rates, 0)
                report["runs"].append(asdict(resumed))
                save()
        single = runs.get((1, "same-global"))
        summary = {}
        for (n, kind), result in runs.items():
            if n == 1 or single is None or not single.samples_per_s or not result.samples_per_s:
                continue
            entry = summary.setdefault(str(n), {})
            entry[f"{kind}_speedup"] = result.samples_per_s / single.samples_per_s
            entry[f"{kind}_efficiency"] = result.samples_per_s / (n * single.samples_per_s)
            if kind == "same-global":
                entry["loss_curve"] = compare_curves(single.losses, result.losses)
        report["summary"][component] = summary
        save()
    return report


def print_table(report: dict) -> None:
    print(f"\nDeFI multi-process training ({report['size']} size, {report['device']})")
    print(f"{'component':<9} {'run':<12} {'procs':>5} {'batch/proc':>10} {'global':>6} {'samples/s':>10} "
          f"{'steps':>5} {'last loss':>10} {'ok':>3} {'wall s':>7}")  # fmt: skip
    for run in report["runs"]:
        rate = f"{run['samples_per_s']:.1f}" if run["samples_per_s"] else "-"
        last = f"{run['losses'][-1]:.4f}" if run["losses"] else "-"
        print(f"{run['component']:<9} {run['kind']:<12} {run['processes']:>5} {run['batch_per_process']:>10} "
              f"{run['global_batch']:>6} {rate:>10} {len(run['steps']):>5} {last:>10} "
              f"{'yes' if run['ok'] else 'NO':>3} {run['seconds']:>7.1f}")  # fmt: skip
        if run["error"]:
            print("    " + run["error"][:300])
    for component, summary in report["summary"].items():
        for n, entry in summary.items():
            parts = [f"{k} {v:.2f}" for k, v in entry.items() if isinstance(v, float)]
            curve = entry.get("loss_curve")
            if curve and "mean_difference" in curve:
                parts.append(
                    f"loss curve vs 1 process over {curve['steps']} steps: mean diff {curve['mean_difference']:+.4f} "
                    f"(stderr {curve['standard_error']:.4f}) -> {'match' if curve['match'] else 'DIFFERENT'}"
                )
            print(f"{component} on {n}: " + "; ".join(parts))


Component = Literal["policy", "gfdm", "gidm"]
Size = Literal["tiny", "official"]


@dataclass
class BenchMultiGPUConfig:
    """Multi-GPU scaling of the three DeFI trainings, launched the way users launch them (accelerate launch)."""

    # Trainings to measure: policy (lerobot-train), gfdm and gidm (the pretraining commands).
    components: list[Component] = field(default_factory=lambda: ["policy", "gfdm", "gidm"])
    # Process counts to run (1 is the reference).
    processes: list[int] = field(default_factory=lambda: [1, 2])
    # tiny: the shipped tiny presets (mechanics only); official: the official recipes with random weights.
    size: Size = "tiny"
    # Global batch of the same-global runs: one number for all, or component=n,... (e.g. gidm=32,gfdm=2)
    # over the defaults (tiny 8; official policy 8, gfdm 4, gidm 64).
    global_batch: str | None = None
    # Training steps of every run.
    steps: int = 20
    # Logged steps left out of samples/s (worker start-up, cuDNN autotuning).
    warmup: int = 3
    # Steps after resuming on the largest process count (0: no resume check).
    resume_steps: int = 2
    # Also run N processes x the global batch each (weak scaling).
    weak: bool = False
    # Data loader workers per process.
    num_workers: int = 4
    # Seed of every run.
    seed: int = 1000
    # Seconds per launched run.
    timeout: float = 600
    # CPU processes over gloo (torchrun) instead of GPUs (accelerate launch).
    cpu: bool = False
    # A LeRobotDataset with CALVIN's cameras and actions (default: converted from the repository's CALVIN slice).
    dataset_root: str | None = None
    # Folder of the runs' outputs and logs.
    work_dir: str = "outputs/bench_multi_gpu"
    # Write the results as JSON here (rewritten after every run).
    out: str | None = None

    def __post_init__(self):
        self.global_batches()  # a malformed --global_batch stops here

    def global_batches(self) -> dict[str, int]:
        """Global batch of the same-global runs per component."""
        defaults = (
            {"policy": 8, "gfdm": 4, "gidm": 64} if self.size == "official" else dict.fromkeys(MODULES, 8)
        )
        if self.global_batch is None:
            return defaults
        if "=" in self.global_batch:
            return defaults | {k: int(v) for k, v in (p.split("=") for p in self.global_batch.split(","))}
        return dict.fromkeys(MODULES, int(self.global_batch))


def main(argv: list[str] | None = None) -> None:
    args = parse_or_exit(BenchMultiGPUConfig, argv)
    if not args.cpu:
        import torch

        needed = max(args.processes)
        if torch.cuda.device_count() < needed:
            print(f"error: {needed} processes need {needed} GPUs, found {torch.cuda.device_count()} "
                  "(use --cpu=true)", file=sys.stderr)  # fmt: skip
            sys.exit(2)
    report = benchmark(args)
    print_table(report)


if __name__ == "__main__":
    main()
