"""Cold vs warm start of the compiled policy: seconds from process start to the first action.

A robot restarts its policy often; with ``compile_mode`` set, every new process compiles the chunk function.
``DeFIConfig.compile_cache_dir`` (``policy/compile_cache.py``) keeps the compiled artefacts on disk. This script
saves a policy (random weights) once, then starts fresh processes that each load it with ``from_pretrained``,
call ``compile_modules`` and ask for one action (``select_action``, fixed noise):

* cold: an empty cache folder (and inductor's cache inside it: nothing compiled before);
* warm: the same folder again (``--warm_runs`` processes).

Each process reports, from the moment the parent started it: imports done, policy loaded and compiled
(``from_pretrained`` + ``compile_modules``, lazy), first action (compilation happens here), and the second chunk's
time (steady state). The table also shows whether the cache entry was loaded or saved and inductor's graph cache
hits / misses.

Then each process predicts one more chunk twice on the same inputs (weights, noise, feature noise): compiled, and
with the same modules run eagerly (``predict_action_chunk(compiled=False)``). How far those two are apart is the
rounding noise of the compiled path (bf16 on a GPU: kernels sum in other orders). A warm start's chunk is "the
same" as the cold start's when no value differs by more than ``--action_atol`` (printed with the differences), so a
real mismatch (a stale or wrong cache entry) stands out against that noise.

    python benchmarks/bench_compiled_start.py                                        # tiny preset, CPU
    python benchmarks/bench_compiled_start.py --device=cuda --size=official --out=start.json   # on a GPU
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lerobot_defi.command_line import parse_or_exit

REPORT_PREFIX = "BENCH_START_REPORT "
# torch's compile timers (torch._dynamo.utils.compilation_time_metrics, seconds summed) reported per start: what
# the first action's compilation spends its time on.
COMPILE_PHASES = {
    "dynamo": "_compile.compile_inner",  # everything below, for every frame dynamo compiled
    "tracing": "bytecode_tracing",  # dynamo running the Python code symbolically
    "backend": "OutputGraph.call_user_compiler",  # AOTAutograd + inductor: compiling, or loading from the cache
    "cache_load": "AOTAutogradCache.inductor_load",  # of which: loading compiled graphs and their kernels
    "guards": "build_guards",
}
Size = Literal["tiny", "official"]
Role = Literal["save", "start"]


@dataclass
class BenchCompiledStartConfig:
    """Cold vs warm start of the compiled policy: seconds from process start to the first action."""

    # Torch device of the policy, e.g. cpu or cuda.
    device: str = "cpu"
    # Policy size: the tiny preset, or the official architectures (random weights either way).
    size: Size = "tiny"
    # torch.compile mode (default: reduce-overhead on CUDA (CUDA graphs), default on the CPU).
    compile_mode: str | None = None
    # Warm starts (fresh processes on the cache the cold start filled) after the cold one.
    warm_runs: int = 1
    # Largest difference of any action value for a warm start's chunk to count as the cold start's (default:
    # 1e-4 on the CPU, which computes in float32; 1e-2 on a GPU, about 2.5 bf16 steps at |a| = 1).
    action_atol: float | None = None
    # Keep the saved policy and the cache here (default: a temporary folder, removed at the end).
    workdir: str | None = None
    # Write the results as JSON here.
    out: str | None = None
    # Internal, set by this script for the processes it starts: "save" (save the policy) or "start" (one start).
    child: Role | None = None
    # Internal: the saved policy's folder, for the child processes.
    policy_dir: str | None = None
    # Internal: the compile cache folder, for the child processes.
    cache_dir: str | None = None


def child_save(args: BenchCompiledStartConfig) -> None:
    """Build the policy with random weights (seed 0) and save it to ``args.policy_dir``."""
    import torch
    from bench_policy import build_policy

    on_gpu = args.device.startswith("cuda")
    overrides = {"gfdm_dtype": "bfloat16", "dtype": "bfloat16"} if on_gpu else {}
    policy = build_policy(args.size == "tiny", args.device, seed=0, **overrides)
    policy.save_pretrained(args.policy_dir)
    print(
        f"saved the {args.size} policy ({sum(p.numel() for p in policy.parameters()) / 1e6:.1f} M parameters)"
    )
    del policy
    if on_gpu:
        torch.cuda.empty_cache()


def child_start(args: BenchCompiledStartConfig) -> None:
    """One robot start: load, compile, first action; prints one report line (wall-clock stamps)."""
    import torch

    import lerobot_policy_defi  # noqa: F401  (registers the policy type)
    from lerobot_defi.policy.modeling_defi import DeFIPolicy

    stamps = {"imported": time.time()}
    if args.device.startswith("cuda"):
        # As lerobot-eval / lerobot-train and bench_policy.py set it. Inductor keys its graphs by it, so
        # bench_policy's fast path finds what this start compiled.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    policy = DeFIPolicy.from_pretrained(args.policy_dir)
    policy.config.compile_cache_dir = args.cache_dir
    policy = policy.to(args.device).eval()
    policy.compile_modules(args.compile_mode)
    stamps["loaded"] = time.time()

    from bench_policy import make_batch

    torch.manual_seed(1)
    batch = make_batch(policy.config, 1, args.device)
    batch.pop("action"), batch.pop("action_is_pad")
    noise = torch.randn(1, policy.config.chunk_size, policy.config.action_dim, device=args.device)
    action = policy.select_action(batch, noise=noise)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    stamps["first_action"] = time.time()
    from torch._dynamo.utils import compilation_time_metrics

    compile_phases = {
        name: sum(compilation_time_metrics.get(key, [])) for name, key in COMPILE_PHASES.items()
    }
    policy.reset()
    started = time.perf_counter()
    policy.select_action(batch, noise=noise)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    second_chunk_ms = (time.perf_counter() - started) * 1e3
    # One chunk on the same inputs, compiled and eager: its values are compared across starts, their gap in here.
    torch.manual_seed(2)  # the same feature noise for both calls
    chunk = policy.predict_action_chunk(batch, noise=noise)
    torch.manual_seed(2)
    eager_chunk = policy.predict_action_chunk(batch, noise=noise, compiled=False)

    from torch._dynamo.utils import counters

    entries = policy.compile_cache_entries()
    report = {
        "stamps": stamps,
        "second_chunk_ms": second_chunk_ms,
        "action": action.float().cpu().tolist(),
        "chunk": chunk.float().cpu().tolist(),
        "eager_vs_compiled_max_abs": (chunk - eager_chunk).abs().max().item(),
        "entry_loaded": any(e.loaded for e in entries),
        "entry_saved": any(e.saved for e in entries),
        # host seconds of the cache entry's steps at the first call (key, load, call, save; CachedCompiledFunction)
        "entry_seconds": entries[0].seconds if entries else {},
        "compile_phases": compile_phases,
        "fxgraph_hits": counters["inductor"]["fxgraph_cache_hit"],
        "fxgraph_misses": counters["inductor"]["fxgraph_cache_miss"],
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }
    print(REPORT_PREFIX + json.dumps(report), flush=True)


def default_action_atol(device: str) -> float:
    """Tolerance of "same action": float32 on the CPU, bf16 on a GPU (see ``action_atol``)."""
    return 1e-4 if device == "cpu" else 1e-2


def max_abs_difference(a: list, b: list) -> float:
    """Largest absolute difference of two equally shaped nested lists of numbers."""
    import torch

    return (torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max().item()


def compare_starts(runs: list[tuple[str, dict]], atol: float) -> dict:
    """Every start's chunk against the first (cold) start's, with tolerance ``atol``; each start's own gap between
    its compiled and eager chunk on the same inputs; and a one-line verdict."""
    cold = runs[0][1]["chunk"]
    per_run = {}
    for name, report in runs:
        difference = max_abs_difference(report["chunk"], cold)
        per_run[name] = {
            "max_abs_diff_to_cold": difference,
            "same": difference <= atol,
            "eager_vs_compiled_max_abs": report["eager_vs_compiled_max_abs"],
        }
    worst = max(r["max_abs_diff_to_cold"] for r in per_run.values())
    gap = max(r["eager_vs_compiled_max_abs"] for r in per_run.values())
    mismatched = [name for name, r in per_run.items() if not r["same"]]
    if mismatched:
        verdict = (
            f"MISMATCH: {', '.join(mismatched)} {'differs' if len(mismatched) == 1 else 'differ'} from the cold "
            f"start by up to {worst:.3g} > tolerance "
            f"{atol:g} (compiled vs eager on the same inputs: up to {gap:.3g})"
        )
    else:
        verdict = (
            f"same action: every start is within {atol:g} of the cold start (max |difference| {worst:.3g}); "
            f"compiled vs eager on the same inputs: up to {gap:.3g}"
        )
    return {"action_atol": atol, "runs": per_run, "verdict": verdict}


def first_action_phases(report: dict) -> dict[str, float]:
    """Seconds from "loaded" to the first action, split: the cache entry's key / load / first call / save (the call
    split further by torch's compile timers: dynamo tracing, backend (of which loading from the cache), guards),
    and the rest (inputs, eager parts, CUDA-graph warm-up and capture)."""
    seconds, entry, phases = (
        report["seconds"],
        report.get("entry_seconds", {}),
        report.get("compile_phases", {}),
    )
    total = seconds["first_action"] - seconds["loaded"]
    split = {f"entry_{step}": value for step, value in entry.items()}
    split.update({f"compile_{name}": value for name, value in phases.items()})
    split["other"] = total - sum(entry.values())
    split["total"] = total
    return split


def print_first_action_phases(runs: list[tuple[str, dict]]) -> None:
    names = ["entry_key", "entry_load", "entry_call", "compile_tracing", "compile_backend", "compile_cache_load",
             "compile_guards", "entry_save", "other", "total"]  # fmt: skip
    print("\nwhere the first action's seconds go (after the policy is loaded; host time):")
    print(f"{'start':<8} " + " ".join(f"{name:>18}" for name in names))
    for name, report in runs:
        split = first_action_phases(report)
        print(f"{name:<8} " + " ".join(f"{split.get(column, float('nan')):>18.2f}" for column in names))


# What a start imports before its "imported" stamp (this script's own imports and child_start's).
START_IMPORTS = (
    "import lerobot_defi.command_line, torch, lerobot_policy_defi, lerobot_defi.policy.cuda_graphs, "
    "lerobot_defi.policy.modeling_defi"
)


def import_seconds_by_package(importtime_output: str, top: int = 12) -> dict[str, float]:
    """``python -X importtime`` output -> self seconds summed per top-level package: the ``top`` largest, then
    ``other`` and ``total``."""
    by_package: dict[str, float] = {}
    for line in importtime_output.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line ("self [us] | cumulative | imported package") and anything else
        package = fields[2].strip().split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(fields[0]) / 1e6
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    result = {name: round(seconds, 2) for name, seconds in ranked[:top]}
    result["other"] = round(sum(seconds for _, seconds in ranked[top:]), 2)
    result["total"] = round(sum(by_package.values()), 2)
    return result


def profile_imports(env: dict, top: int = 12) -> dict[str, float]:
    """A start's imports once more, in their own process under ``-X importtime`` (not in a timed start: the
    profiler slows imports a little): self seconds per package, and the process's wall seconds."""
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", START_IMPORTS], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"the import profile failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    seconds = import_seconds_by_package(result.stderr, top)
    seconds["wall"] = round(time.time() - started, 2)
    return seconds


def child_command(args: BenchCompiledStartConfig, role: str) -> list[str]:
    """The command line of one child process (this script again, with the parent's resolved options)."""
    return [
        sys.executable,
        __file__,
        f"--child={role}",
        f"--policy_dir={args.policy_dir}",
        f"--cache_dir={args.cache_dir}",
        f"--device={args.device}",
        f"--size={args.size}",
        f"--compile_mode={args.compile_mode}",
    ]


def run_child(args: BenchCompiledStartConfig, role: str, env: dict) -> dict | None:
    command = child_command(args, role)
    started = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"the {role} process failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    if role == "save":
        print(result.stdout.strip(), f"in {time.time() - started:.1f} s", flush=True)
        return None
    line = next(line for line in result.stdout.splitlines() if line.startswith(REPORT_PREFIX))
    report = json.loads(line.removeprefix(REPORT_PREFIX))
    report["seconds"] = {name: stamp - started for name, stamp in report.pop("stamps").items()}
    return report


def main() -> None:
    args = parse_or_exit(BenchCompiledStartConfig)
    args.compile_mode = args.compile_mode or (
        "reduce-overhead" if args.device.startswith("cuda") else "default"
    )
    if args.child == "save":
        return child_save(args)
    if args.child == "start":
        return child_start(args)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="defi_compiled_start_"))
    args.policy_dir, args.cache_dir = str(workdir / "policy"), str(workdir / "compile_cache")
    shutil.rmtree(args.cache_dir, ignore_errors=True)  # cold means cold
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # Inductor's cache goes inside the (empty) compile cache folder: nothing compiled earlier on this machine helps.
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("TRITON_CACHE_DIR", None)
    if not (Path(args.policy_dir) / "model.safetensors").is_file():
        run_child(args, "save", env)
    runs = [("cold", run_child(args, "start", env))]
    print(f"cold start done: first action after {runs[0][1]['seconds']['first_action']:.1f} s", flush=True)
    for index in range(args.warm_runs):
        runs.append((f"warm {index + 1}", run_child(args, "start", env)))
    imports = profile_imports(env)

    atol = args.action_atol if args.action_atol is not None else default_action_atol(args.device)
    comparison = compare_starts(runs, atol)
    header = (
        f"{'start':<8} {'imports s':>9} {'loaded s':>9} {'1st action s':>12} {'compile s':>10} "
        f"{'2nd chunk ms':>12} {'entry':>7} {'fx hit/miss':>11} {'|Δ| to cold':>11} {'same':>4} "
        f"{'|compiled-eager|':>16}"
    )
    print(
        f"\n{args.size} policy, {args.device} ({runs[0][1]['device_name']}), compile_mode={args.compile_mode}, "
        f"torch {runs[0][1]['torch']}; seconds from process start"
    )
    print(header)
    for name, report in runs:
        s = report["seconds"]
        entry = "loaded" if report["entry_loaded"] else "saved" if report["entry_saved"] else "none"
        same = comparison["runs"][name]
        print(
            f"{name:<8} {s['imported']:>9.1f} {s['loaded']:>9.1f} {s['first_action']:>12.1f} "
            f"{s['first_action'] - s['loaded']:>10.1f} {report['second_chunk_ms']:>12.1f} {entry:>7} "
            f"{report['fxgraph_hits']:>5}/{report['fxgraph_misses']:<5} {same['max_abs_diff_to_cold']:>11.3g} "
            f"{'yes' if same['same'] else 'NO':>4} {same['eager_vs_compiled_max_abs']:>16.3g}"
        )
    print(comparison["verdict"] + f" (tolerance: --action_atol={atol:g})")
    print_first_action_phases(runs)
    print(
        "\nimports of a start (python -X importtime, self seconds by package): "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in imports.items())
    )
    print(f"cache folder: {args.cache_dir}")
    if args.out:
        for _, report in runs:
            report["first_action_phases"] = first_action_phases(report)
        results = {
            "args": asdict(args),
            "runs": dict(runs),
            "comparison": comparison,
            "imports_by_package_s": imports,
        }
        Path(args.out).write_text(json.dumps(results, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
