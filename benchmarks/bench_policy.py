"""Speed and memory of the DeFI policy at the official size (random weights): reference, fast and fast + FP8
paths side by side, in one process on one device.

Reference = what the original implementation runs: fp16 eager GFDM, fp32 trainable parts, instructions
re-encoded at every call, the action head's context re-computed at every solver step.
Fast = this plugin: bf16 (or fp16) frozen parts, cached instructions, context once per chunk, only the needed
UNet blocks, fused attention, optional ``torch.compile`` (``--compile_mode``), bf16 autocast of the trainable
parts (``dtype``) in training and inference.
Fast + FP8 = the fast path with ``gfdm_fp8`` (FP8 matrix products in the frozen UNet; ``models/gfdm_fp8.py``),
where the device can run it (else its column says why not).

Prints the table of docs/performance.md#s2 (and writes every figure as JSON with ``--out``, the table too):
latency per chunk at batch 1 (median, p90), chunks/s at batch 8, training samples/s at batch 8 and at the largest
batch that fits, peak memory, FP8's error against bf16 (GFDM features, action chunks; same weights and noise),
the share of the UNet's FLOPs in FP8, and cold vs warm start (``bench_compiled_start.py`` in subprocesses).

    python benchmarks/bench_policy.py --compile_mode=reduce-overhead --out=results.json   # on a GPU
    python benchmarks/bench_policy.py --tiny=true                                         # CPU smoke run
"""

import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.models.edm import sample_first_order
from lerobot_defi.models.gfdm import text_context_from_clip
from lerobot_defi.models.gfdm_fp8 import fp8_flop_share, fp8_unavailable_reason, plan_fp8
from lerobot_defi.models.reference_architectures import official_random_config_overrides
from lerobot_defi.policy.configuration_defi import DeFIConfig, load_preset
from lerobot_defi.policy.modeling_defi import DeFIPolicy

CAMERAS = ("observation.images.static", "observation.images.gripper")
TASKS = ["open the drawer", "push the red block to the left", "turn on the light bulb", "stack the blocks"]


def build_config(tiny: bool, device: str, **overrides) -> DeFIConfig:
    if tiny:
        config = load_preset("tiny", device=device, **overrides)
    else:
        config = DeFIConfig(device=device, **official_random_config_overrides(), **overrides)
        config.__post_init__()
    size = config.image_size
    config.input_features = {key: PolicyFeature(FeatureType.VISUAL, (3, size, size)) for key in CAMERAS}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (7,))}
    return config


def build_policy(tiny: bool, device: str, seed: int = 0, **overrides) -> DeFIPolicy:
    torch.manual_seed(seed)
    with torch.device(device):
        policy = DeFIPolicy(build_config(tiny, device, **overrides))
    return policy.to(device)


def make_batch(config: DeFIConfig, batch_size: int, device: str) -> dict:
    size = config.image_size
    batch = {key: torch.rand(batch_size, 3, size, size, device=device) * 2 - 1 for key in CAMERAS}
    batch["task"] = [TASKS[i % len(TASKS)] for i in range(batch_size)]
    batch["action"] = torch.rand(batch_size, config.chunk_size, 7, device=device) * 2 - 1
    batch["action_is_pad"] = torch.zeros(batch_size, config.chunk_size, dtype=torch.bool, device=device)
    return batch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int) -> tuple[float, float]:
    """Median and p90 wall time in ms of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[max(0, int(0.9 * len(times)) - 1)]


class ReferenceSampler:
    """The official action sampler: the 4-layer context encoder runs inside each of the 10 denoiser calls."""

    def __init__(self, policy: DeFIPolicy):
        self.policy = policy
        self.head = policy.action_head

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        policy, head = self.policy, self.head
        policy.text.clear_cache()  # the official code re-runs its three text encoders at every chunk
        inputs = policy._tensor_inputs(batch)
        # Everything but the context encoder, once (as officially): features, Video Former, GIDM.
        captured = {}
        original = head.encode_context

        def record(goal, video, latent):
            captured["inputs"] = (goal, video, latent)
            return original(goal, video, latent)

        head.encode_context = record
        try:
            policy._encode(*inputs)
        finally:
            head.encode_context = original

        def denoiser(x, sigma):
            context = original(*captured["inputs"])
            return head.denoise(x, sigma.expand(x.shape[0]), context)

        device = inputs[0].device
        sigmas = head.inference_sigmas(device)
        noise = torch.randn(len(batch["task"]), head.chunk_size, head.action_dim, device=device)
        return sample_first_order(denoiser, noise * sigmas[0], sigmas)


def train_step_fn(policy: DeFIPolicy, batch: dict, autocast_dtype: torch.dtype | None, reference: bool):
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-4, betas=(0.9, 0.9), weight_decay=0.05)
    device_type = batch["action"].device.type
    policy.train()

    def step():
        if reference:
            policy.text.clear_cache()
        context = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        with context:
            loss, _ = policy.forward(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def component_times(policy: DeFIPolicy, batch: dict, device: str, repeats: int) -> dict[str, float]:
    """Median ms of each stage of one chunk (eager, the given policy's dtypes)."""
    policy.eval()
    cfg = policy.config
    times: dict[str, float] = {}

    def measure(name, fn):
        times[name] = timed(fn, device, repeats, warmup=2)[0]
        return fn()

    def encode_uncached():
        policy.text.clear_cache()
        return policy.text(batch["task"])

    with torch.no_grad():
        instructions = measure("text encoders (uncached)", encode_uncached)
        images = torch.cat([batch[k] for k in cfg.gfdm_camera_keys])
        gfdm = policy.gfdm
        measure("VAE encoder", lambda: gfdm.encode_condition(images))
        context = text_context_from_clip(instructions.clip_hidden, gfdm.cross_attention_dim)
        context = context.repeat(len(cfg.gfdm_camera_keys), 1, 1)
        noise = policy._feature_noise(images)
        features = measure("GFDM UNet (truncated) + VAE", lambda: gfdm(images, context, noise=noise))
        times["GFDM UNet (truncated)"] = times["GFDM UNet (truncated) + VAE"] - times["VAE encoder"]
        encoded = measure(
            "Video Former + GIDM + context encoder (after GFDM)",
            lambda: after_gfdm(policy, features, instructions),
        )
        measure("action sampler (10 steps, cached context)", lambda: policy.action_head.sample(encoded))
    return times


def after_gfdm(policy: DeFIPolicy, features: torch.Tensor, instructions) -> torch.Tensor:
    from einops import rearrange

    cfg = policy.config
    cameras = cfg.gfdm_camera_keys
    tokens = rearrange(features, "(v b) f c h w -> v b f (h w) c", v=len(cameras))
    video = policy.video_former(
        torch.cat([tokens[cameras.index(k)] for k in cfg.video_former_camera_keys], 2)
    )
    frames = tokens[cameras.index(cfg.gidm_camera_key)][:, list(cfg.gidm_frame_indices)]
    gidm = policy.gidm(
        policy.gidm_feature_proj(frames) + policy.gidm_frame_embedding,
        instructions.t5_hidden,
        instructions.t5_mask,
    )
    return policy.action_head.encode_context(
        instructions.clip_pooled[:, None], video, gidm["latent_action_tokens"]
    )


def peak_memory_gib(device: str) -> float | None:
    """Peak memory allocated on the GPU since the last :func:`reset_peak`, GiB (2 decimals); None on the CPU."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def seeded_chunk(policy: DeFIPolicy, batch: dict, noise: torch.Tensor, seed: int, compiled: bool = True):
    """A chunk with fixed action noise and feature noise drawn after ``torch.manual_seed(seed)``: two policies
    (or the compiled and eager paths of one) see the same inputs."""
    torch.manual_seed(seed)
    return policy.predict_action_chunk(batch, noise=noise, compiled=compiled)


def gfdm_features(policy: DeFIPolicy, batch: dict, seed: int) -> torch.Tensor:
    """The eager GFDM features ``(V*B, F, C, h, w)`` of a batch, feature noise drawn after ``manual_seed(seed)``."""
    cfg = policy.config
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        torch.manual_seed(seed)
        images, feature_noise, clip_hidden, *_ = policy._tensor_inputs(batch)
        context = text_context_from_clip(clip_hidden, policy.gfdm.cross_attention_dim)
        return policy.gfdm(images, context.repeat(len(cfg.gfdm_camera_keys), 1, 1), noise=feature_noise)


FrozenDtype = Literal["bfloat16", "float16"]
Section = Literal["start", "inference", "training", "fp8", "best_batch", "components"]
# The table: every section but the per-component times (eager; optional).
TABLE_SECTIONS = ("start", "inference", "training", "fp8", "best_batch")


@dataclass
class BenchPolicyConfig:
    """Speed and memory of the DeFI policy at the official size (random weights): reference, fast and fast + FP8
    paths side by side in one process."""

    # Tiny preset networks: a smoke run of this script (on the CPU without CUDA or with --device=cpu).
    tiny: bool = False
    # Torch device (default: cuda when available, else cpu).
    device: str | None = None
    # torch.compile mode of the fast paths, e.g. reduce-overhead (default: eager).
    compile_mode: str | None = None
    # dtype of the fast path's frozen parts (GFDM) on a GPU; the CPU runs float32.
    frozen_dtype: FrozenDtype = "bfloat16"
    # Timed calls per measurement (training: a third of it, at least 3); 3 with --tiny=true.
    repeats: int = 30
    # What to measure (default: start, inference, training, fp8, best_batch; without start on the CPU, where a
    # cold compilation takes a quarter of an hour): start (cold and warm start, bench_compiled_start.py in
    # subprocesses, run first), inference, training (batch 8), fp8 (the fast path with gfdm_fp8: speed, training,
    # errors against bf16), best_batch (training samples/s at the largest batch that fits; CUDA only),
    # components (eager per-stage times).
    sections: list[Section] | None = None
    # Inference batch sizes.
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    # Inference batch sizes of the FP8 path (default: batch_sizes; each is one more compilation); its errors
    # against bf16 are measured at the largest.
    fp8_batch_sizes: list[int] | None = None
    # Training batch sizes tried (in order, until one does not fit) for best_batch.
    best_batch_candidates: list[int] = field(default_factory=lambda: [16, 32, 48, 64, 96, 128, 192, 256])
    # best_batch for the FP8 path too (two more compilations of its training step).
    fp8_best_batch: bool = False
    # Kernel-family profiles: the batch-1 chunk of the fast paths (inference / fp8 sections) and a batch-8 training
    # step of each path (training section).
    profile: bool = True
    # Warm starts after the cold one (start section).
    warm_runs: int = 2
    # Folder for the start section's saved policy and compile cache, which the fast paths then use too (default: a
    # temporary folder, removed at the end).
    workdir: str | None = None
    # Write the results as JSON here (rewritten after every figure).
    out: str | None = None


class Results:
    """Figures by section, printed as they come and written to ``out`` (JSON) after each."""

    def __init__(self, out: str | None, setup: dict):
        self.out = out
        self.data: dict[str, dict] = {"setup": dict(setup)}

    def __call__(self, section: str, key: str, value) -> None:
        self.data.setdefault(section, {})[key] = value
        print(f"[{section}] {key}: {value}", flush=True)
        self.write()

    def get(self, section: str, key: str, default=None):
        return self.data.get(section, {}).get(key, default)

    def write(self) -> None:
        if self.out:
            Path(self.out).write_text(json.dumps(self.data, indent=2, default=str))


def run_start_section(args: BenchPolicyConfig, device: str, workdir: Path, report: Results) -> Path | None:
    """Cold and warm starts (``bench_compiled_start.py`` in subprocesses, before this process uses the device);
    returns its compile cache folder."""
    out = workdir / "compiled_start.json"
    command = [
        sys.executable,
        str(Path(__file__).with_name("bench_compiled_start.py")),
        f"--device={device}",
        f"--size={'tiny' if args.tiny else 'official'}",
        f"--warm_runs={args.warm_runs}",
        f"--workdir={workdir / 'start'}",
        f"--out={out}",
    ]
    if args.compile_mode:
        command.append(f"--compile_mode={args.compile_mode}")
    print("start section:", " ".join(command), flush=True)
    started = time.perf_counter()
    if subprocess.run(command).returncode != 0:
        report("start", "error", "bench_compiled_start.py failed (its output is above)")
        return None
    start = json.loads(out.read_text())
    for name, run in start["runs"].items():
        seconds = run["seconds"]
        report(
            "start",
            name,
            {
                "imports_s": round(seconds["imported"], 1),
                "loaded_s": round(seconds["loaded"], 1),
                "first_action_s": round(seconds["first_action"], 1),
                "compile_s": round(seconds["first_action"] - seconds["loaded"], 1),
                "entry": "loaded" if run["entry_loaded"] else "saved" if run["entry_saved"] else "none",
                "max_abs_diff_to_cold": start["comparison"]["runs"][name]["max_abs_diff_to_cold"],
                "eager_vs_compiled_max_abs": run["eager_vs_compiled_max_abs"],
                "second_chunk_ms": round(run["second_chunk_ms"], 2),
                # after loading: the cache entry's steps and torch's compile timers (bench_compiled_start.py)
                "first_action_phases_s": {k: round(v, 2) for k, v in run["first_action_phases"].items()},
            },
        )
    report("start", "imports_by_package_s", start["imports_by_package_s"])
    report("start", "action_atol", start["comparison"]["action_atol"])
    report("start", "verdict", start["comparison"]["verdict"])
    report("start", "section_s", round(time.perf_counter() - started, 1))
    return workdir / "start" / "compile_cache"


def measure_inference(policy, label: str, batch_sizes, device: str, repeats: int, report: Results) -> None:
    """Median / p90 ms per chunk, chunks/s and peak memory per batch size (the first call compiles)."""
    policy.eval()
    for batch_size in batch_sizes:
        batch = make_batch(policy.config, batch_size, device)
        reset_peak(device)
        if label != "reference":
            started = time.perf_counter()
            with torch.no_grad():
                policy.predict_action_chunk(batch)
            sync(device)
            report(
                f"inference_{label}",
                f"batch{batch_size}_first_call_s",
                round(time.perf_counter() - started, 1),
            )
            entries = policy.compile_cache_entries()
            if entries:  # the newest signature is this batch size's
                entry = entries[-1]
                status = "loaded" if entry.loaded else "saved" if entry.saved else "none"
                report(
                    f"inference_{label}",
                    f"batch{batch_size}_cache_entry",
                    f"{status}, {entry.misses} graph(s) compiled",
                )
            fn = policy.predict_action_chunk
        else:
            fn = ReferenceSampler(policy)
        med, p90 = timed(lambda batch=batch, fn=fn: fn(batch), device, repeats, warmup=3)
        report(f"inference_{label}", f"batch{batch_size}_median_ms", round(med, 2))
        report(f"inference_{label}", f"batch{batch_size}_p90_ms", round(p90, 2))
        report(f"inference_{label}", f"batch{batch_size}_chunks_per_s", round(batch_size * 1e3 / med, 1))
        report(f"inference_{label}", f"batch{batch_size}_peak_GiB", peak_memory_gib(device))


def profile_chunk(policy, label: str, device: str, report: Results) -> None:
    """GPU time per kernel family of one batch-1 chunk (5 calls under the profiler; CPU time on the CPU), and the
    top kernels printed."""
    from bench_gfdm_variants import kernel_table  # (imports this module: not at the top)

    batch = make_batch(policy.config, 1, device)
    table, families = kernel_table(lambda: policy.predict_action_chunk(batch), device, top=25)
    print(table, flush=True)
    report_kernel_families(report, f"profile_{label}_batch1_ms_per_chunk", families)


def report_kernel_families(report: Results, section: str, families: dict[str, float]) -> float:
    """Reports ms per kernel family (largest first) and their total under ``section``; returns the total."""
    for family, ms in sorted(families.items(), key=lambda item: -item[1]):
        report(section, family, round(ms, 2))
    total = sum(families.values())
    report(section, "total", round(total, 2))
    return total


def dispatched_ops(fn) -> int:
    """How many ATen ops ``fn()`` calls from Python or from a compiled graph's wrapper (top-level ``aten::`` events
    of the profiler, not the ops they call inside): each is host work, and on a GPU at least one kernel launch. The
    kernels a compiled graph launches itself (Triton, C++) are not ATen ops and are not counted."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()

    def nested(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return sum(1 for e in profile.events() if e.name.startswith("aten::") and not nested(e))


def measure_training(
    policy, label: str, batch_size: int, device: str, steps: int, report: Results, profile: bool = False
) -> float:
    """Samples/s (median of ``steps`` timed steps) of training at ``batch_size`` (reference: fp32 trainable parts,
    instructions re-encoded; fast paths: bf16 autocast on a GPU); the first step (compilation) is timed apart, and
    one more step counts the ATen ops it dispatches (:func:`dispatched_ops`). With ``profile``, also the kernel
    time of a step by family (:func:`profile_training_step`)."""
    batch = make_batch(policy.config, batch_size, device)
    reference = label == "reference"
    autocast = torch.bfloat16 if device.startswith("cuda") and not reference else None
    reset_peak(device)
    step = train_step_fn(policy, batch, autocast, reference=reference)
    started = time.perf_counter()
    step()
    sync(device)
    report(f"training_{label}", f"batch{batch_size}_first_step_s", round(time.perf_counter() - started, 1))
    med, p90 = timed(step, device, steps, warmup=1)
    samples_per_s = batch_size * 1e3 / med
    report(f"training_{label}", f"batch{batch_size}_step_ms_median_p90", [round(med, 1), round(p90, 1)])
    report(f"training_{label}", f"batch{batch_size}_samples_per_s", round(samples_per_s, 2))
    report(f"training_{label}", f"batch{batch_size}_peak_GiB", peak_memory_gib(device))
    report(f"training_{label}", f"batch{batch_size}_dispatched_ops_per_step", dispatched_ops(step))
    if profile:
        profile_training_step(step, label, batch_size, med, device, report)
    policy.eval()
    return samples_per_s


def profile_training_step(
    step, label: str, batch_size: int, step_ms: float, device: str, report: Results
) -> None:
    """Kernel time per family of one training ``step`` (5 steps under the profiler; CPU op time on the CPU) and its
    share of the step's median wall time ``step_ms``: on a GPU, the rest of the wall time is the GPU waiting for the
    host (Python, dispatch, launches)."""
    from bench_gfdm_variants import kernel_table  # (imports this module: not at the top)

    table, families = kernel_table(step, device, top=15)
    print(table, flush=True)
    busy = report_kernel_families(report, f"profile_training_{label}_batch{batch_size}_ms_per_step", families)
    report(f"training_{label}", f"batch{batch_size}_kernel_share_of_step", round(busy / step_ms, 3))


def largest_fitting_batch(policy, candidates: list[int], device: str) -> int | None:
    """The largest of ``candidates`` (tried in order until one runs out of memory) at which an eager bf16 training
    step of ``policy`` fits."""
    fitting = None
    for batch_size in candidates:
        try:
            with torch.compiler.set_stance("force_eager"):
                batch = make_batch(policy.config, batch_size, device)
                step = train_step_fn(policy, batch, torch.bfloat16, reference=False)
                reset_peak(device)
                step()
                sync(device)
            print(f"  batch {batch_size} fits: {peak_memory_gib(device):.1f} GiB (eager)", flush=True)
            fitting = batch_size
        except torch.OutOfMemoryError:
            break
        finally:
            batch = step = None
            policy.zero_grad(set_to_none=True)
            free_memory(device)
    policy.eval()
    return fitting


def measure_best_batch(policy, label: str, candidates: list[int], device, report: Results) -> None:
    """Training samples/s at the largest of ``candidates`` that fits (a smaller one if the compiled step needs
    more memory than the eager one that was tried)."""
    for batch_size in sorted(candidates, reverse=True):
        try:
            samples_per_s = measure_training(policy, label, batch_size, device, 3, report)
        except torch.OutOfMemoryError:
            print(f"  {label}: batch {batch_size} does not fit compiled; trying a smaller one", flush=True)
            free_memory(device)
            continue
        report(f"best_batch_{label}", "batch_size", batch_size)
        report(f"best_batch_{label}", "samples_per_s", round(samples_per_s, 2))
        split = step_cost_split(report.data, label)
        if split is not None:
            report(f"best_batch_{label}", "step_cost_split", split)
        return
    report(f"best_batch_{label}", "error", f"no batch of {candidates} fits")


def step_cost_split(data: dict, label: str) -> dict | None:
    """A training step's time as ``fixed + per_sample * batch``, through the batch-8 and best-batch samples/s of
    path ``label`` in ``data`` (``bench_policy`` results): the fixed part is what a step costs whatever its batch
    (host work, launches, syncs, small kernels), the per-sample part bounds the samples/s of any batch. None
    without both figures."""
    training = data.get(f"training_{label}", {})
    best = data.get(f"best_batch_{label}", {}).get("batch_size")
    small, large = training.get("batch8_samples_per_s"), training.get(f"batch{best}_samples_per_s")
    if not small or not large or best == 8:
        return None
    small_ms, large_ms = 8 * 1e3 / small, best * 1e3 / large
    per_sample = (large_ms - small_ms) / (best - 8)
    fixed = small_ms - 8 * per_sample
    return {
        "from_batches": [8, best],
        "fixed_ms_per_step": round(fixed, 1),
        "ms_per_sample": round(per_sample, 2),
        "fixed_share_at_batch8": round(fixed / small_ms, 3),
        "samples_per_s_bound": round(1e3 / per_sample, 1),
    }


def measure_fp8_errors(
    reference, fast, fp8, batch_size: int, device: str, report: Results, draws: int = 3
) -> None:
    """FP8 against bf16 on the same weights and inputs: GFDM features and action chunks (the largest difference
    over ``draws`` draws of feature noise), with the precision noise of the other paths beside them for scale: the
    reference path (fp16 GFDM, fp32 trainable parts, given the fast path's weights) and each path's eager modules."""
    if reference is not None:
        reference.load_state_dict(fast.state_dict())  # training steps changed each path's trainable weights
        reference.eval()
    fast.eval()
    fp8.eval()
    batch = make_batch(fast.config, batch_size, device)
    noise = torch.randn(batch_size, fast.config.chunk_size, fast.config.action_dim, device=device)
    errors: dict[str, list[float]] = {}

    def add(name, value):
        errors.setdefault(name, []).append(value)

    for seed in range(draws):
        bf16, fp8_features = gfdm_features(fast, batch, seed), gfdm_features(fp8, batch, seed)
        add("features_fp8_vs_bf16_relative_rms", relative_rms(fp8_features, bf16))
        add("features_fp8_vs_bf16_max_abs", max_abs(fp8_features, bf16))
        add("features_bf16_max_abs", bf16.abs().max().item())
        chunk, fp8_chunk = seeded_chunk(fast, batch, noise, seed), seeded_chunk(fp8, batch, noise, seed)
        add("chunk_fp8_vs_bf16_max_abs", max_abs(fp8_chunk, chunk))
        add(
            "chunk_bf16_compiled_vs_eager_max_abs",
            max_abs(seeded_chunk(fast, batch, noise, seed, False), chunk),
        )
        add(
            "chunk_fp8_compiled_vs_eager_max_abs",
            max_abs(seeded_chunk(fp8, batch, noise, seed, False), fp8_chunk),
        )
        add("chunk_bf16_max_abs", chunk.abs().max().item())
        if reference is not None:
            reference_features = gfdm_features(reference, batch, seed)
            add("features_fp16_reference_vs_bf16_relative_rms", relative_rms(reference_features, bf16))
            add(
                "chunk_reference_vs_bf16_max_abs", max_abs(seeded_chunk(reference, batch, noise, seed), chunk)
            )
    report("fp8_errors", "batch_size", batch_size)
    for name, values in errors.items():
        report("fp8_errors", name, float(f"{max(values):.4g}"))


def summary_table(data: dict) -> str:
    """The issue's table (Markdown) from the results of :func:`main`: reference, fast and fast + FP8 side by side;
    "—" where a figure was not measured."""

    def get(section: str, key: str):
        return data.get(section, {}).get(key)

    def value(section: str, key: str, suffix: str = "") -> str:
        figure = get(section, key)
        return "—" if figure is None else f"{figure}{suffix}"

    def figure_and_detail(section: str, key: str, detail: str) -> str:
        figure = get(section, key)
        return "—" if figure is None else f"{figure} ({get(section, detail)})"

    def latency(label: str) -> str:
        return figure_and_detail(f"inference_{label}", "batch1_median_ms", "batch1_p90_ms")

    def training(label: str) -> str:
        figure, base = (
            get(f"training_{label}", "batch8_samples_per_s"),
            get("training_reference", "batch8_samples_per_s"),
        )
        if figure is None or label == "reference" or not base:
            return value(f"training_{label}", "batch8_samples_per_s")
        return f"{figure} ({figure / base:.2f}×)"

    def best_batch(label: str) -> str:
        size = get(f"best_batch_{label}", "batch_size")
        return "—" if size is None else f"{get(f'best_batch_{label}', 'samples_per_s')} (batch {size})"

    def memory(label: str) -> str:
        keys = (
            ("inference", "batch1_peak_GiB"),
            ("inference", "batch8_peak_GiB"),
            ("training", "batch8_peak_GiB"),
        )
        return " / ".join(value(f"{kind}_{label}", key) for kind, key in keys)

    fp8_missing = get("fp8", "not_available")

    def fp8(text: str) -> str:
        return "n/a ¹" if fp8_missing else text

    share = get("fp8_flops", "fp8_share")
    start = data.get("start", {})
    warms = [run for name, run in start.items() if name.startswith("warm ")]
    cold = start.get("cold")
    rows = [
        ("batch-1 chunk, median (p90) ms", latency("reference"), latency("fast"), fp8(latency("fp8"))),
        (
            "batch-8 chunks/s",
            value("inference_reference", "batch8_chunks_per_s"),
            value("inference_fast", "batch8_chunks_per_s"),
            fp8(value("inference_fp8", "batch8_chunks_per_s")),
        ),
        (
            "training, batch 8, samples/s (× reference)",
            training("reference"),
            training("fast"),
            fp8(training("fp8")),
        ),
        ("training, best batch that fits, samples/s", "—", best_batch("fast"), fp8(best_batch("fp8"))),
        ("peak GiB: inference b1 / b8, training b8", memory("reference"), memory("fast"), fp8(memory("fp8"))),
        (
            "GFDM features vs bf16: relative RMS (max abs)",
            value("fp8_errors", "features_fp16_reference_vs_bf16_relative_rms"),
            "baseline",
            fp8(
                figure_and_detail(
                    "fp8_errors", "features_fp8_vs_bf16_relative_rms", "features_fp8_vs_bf16_max_abs"
                )
            ),
        ),
        (
            "action chunk vs bf16 compiled: max abs",
            value("fp8_errors", "chunk_reference_vs_bf16_max_abs"),
            value("fp8_errors", "chunk_bf16_compiled_vs_eager_max_abs", " (its eager path)"),
            fp8(value("fp8_errors", "chunk_fp8_vs_bf16_max_abs")),
        ),
        ("share of the UNet's FLOPs in FP8", "0", "0", "—" if share is None else f"{100 * share:.1f} %"),
        (
            "first action, cold / warm start, s",
            "—",
            "—"
            if cold is None
            else f"{cold['first_action_s']} / {', '.join(str(w['first_action_s']) for w in warms)}",
            "—",
        ),
        (
            "warm start: imports + load + compile, s",
            "—",
            "—"
            if not warms
            else f"{warms[-1]['imports_s']} + "
            f"{round(warms[-1]['loaded_s'] - warms[-1]['imports_s'], 1)} + {warms[-1]['compile_s']}",
            "—",
        ),
    ]
    setup = data.get("setup", {})
    notes = [
        f"{setup.get('device_name')}, torch {setup.get('torch')}, "
        f"{'tiny preset' if setup.get('tiny') else 'official size, random weights'}, "
        f"frozen parts: reference {setup.get('reference_gfdm_dtype')}, fast {setup.get('fast_gfdm_dtype')}"
    ]
    if fp8_missing:
        notes.append(f"¹ FP8 not available: {fp8_missing}")
    if start.get("verdict"):
        notes.append(f"warm vs cold start: {start['verdict']} (tolerance {start.get('action_atol')})")
    fast = f"fast, {setup.get('compile_mode')}" if setup.get("compile_mode") else "fast, eager"
    lines = [f"| | reference | {fast} | {fast} + FP8 |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def main() -> None:
    args = parse_or_exit(BenchPolicyConfig)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    sections = set(args.sections or [s for s in TABLE_SECTIONS if on_gpu or s != "start"])
    repeats = 3 if args.tiny else args.repeats
    training_steps = max(3, repeats // 3)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="defi_bench_policy_"))
    report = Results(
        args.out,
        {
            "device": device,
            "device_name": "cpu",
            "torch": torch.__version__,
            "tiny": args.tiny,
            "compile_mode": args.compile_mode,
            "reference_gfdm_dtype": "float16" if on_gpu else "float32",
            "fast_gfdm_dtype": args.frozen_dtype if on_gpu else "float32",
            "sections": sorted(sections),
        },
    )
    started = time.perf_counter()

    cache_dir = run_start_section(args, device, workdir, report) if "start" in sections else None
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        report.data["setup"]["device_name"] = torch.cuda.get_device_name()
    fast_options = {
        "gfdm_dtype": args.frozen_dtype if on_gpu else "float32",
        "dtype": "bfloat16" if on_gpu else None,  # mixed precision of the trainable parts, as trained
    }
    if cache_dir is not None:  # the start section's cache: what it compiled is not compiled again
        fast_options["compile_cache_dir"] = str(cache_dir)
    t0 = time.perf_counter()
    reference = build_policy(args.tiny, device, gfdm_dtype="float16" if on_gpu else "float32")
    fast = build_policy(args.tiny, device, **fast_options)
    report("setup", "build_s", round(time.perf_counter() - t0, 1))
    if args.compile_mode:
        fast.compile_modules(args.compile_mode)
    report("setup", "trainable_M", round(sum(p.numel() for p in fast.get_optim_params()) / 1e6, 2))
    report("setup", "total_M", round(sum(p.numel() for p in fast.parameters()) / 1e6, 1))

    if "components" in sections:
        batch = make_batch(fast.config, 1, device)
        with torch.compiler.set_stance("force_eager"):
            for name, ms in component_times(fast, batch, device, repeats).items():
                report("components_ms_batch1_eager_" + args.frozen_dtype, name, round(ms, 2))

    if "inference" in sections:
        measure_inference(reference, "reference", args.batch_sizes, device, repeats, report)
        measure_inference(fast, "fast", args.batch_sizes, device, repeats, report)
        if args.profile:
            profile_chunk(fast, "fast", device, report)

    if "training" in sections:
        measure_training(reference, "reference", 8, device, training_steps, report, profile=args.profile)
        measure_training(fast, "fast", 8, device, training_steps, report, profile=args.profile)

    fp8 = None
    if "fp8" in sections:
        # What FP8 would cover (counted, so also where it cannot run).
        plan = plan_fp8(fast.gfdm.unet)
        share = fp8_flop_share(
            fast.gfdm,
            plan,
            len(fast.config.gfdm_camera_keys),
            fast.config.image_size,
            fast.config.clip_context_length,
        )
        report("fp8_flops", "fp8_layers", len(plan.targets))
        report("fp8_flops", "fp8_share", round(share["fp8_share"], 4))
        report("fp8_flops", "unet_tflop_per_sample", round(share["unet_tflop"], 3))
        reason = fp8_unavailable_reason(device)
        if reason is None and fast_options["gfdm_dtype"] != "bfloat16":
            reason = (
                f"gfdm_fp8 needs gfdm_dtype=bfloat16; this run's fast path uses {fast_options['gfdm_dtype']}"
            )
        if reason:
            report("fp8", "not_available", reason)
        else:
            fp8 = build_policy(args.tiny, device, gfdm_fp8=True, **fast_options)
            fp8.load_state_dict(fast.state_dict())  # the same weights (training changed the fast path's)
            if args.compile_mode:
                fp8.compile_modules(args.compile_mode)

    if fp8 is not None:  # built in the fp8 section only
        fp8_batch_sizes = args.fp8_batch_sizes or args.batch_sizes
        measure_inference(fp8, "fp8", fp8_batch_sizes, device, repeats, report)
        if args.profile:
            profile_chunk(fp8, "fp8", device, report)
        measure_fp8_errors(reference, fast, fp8, max(fp8_batch_sizes), device, report)
        if "training" in sections:
            measure_training(fp8, "fp8", 8, device, training_steps, report, profile=args.profile)

    if "best_batch" in sections:
        if not on_gpu:
            report("best_batch", "not_measured", "CUDA only")
        else:
            # One policy on the GPU at a time, without its captured inference graphs.
            del reference
            reference = None
            if fp8 is not None:
                fp8.to("cpu")
            fast.release_inference_memory()
            free_memory(device)
            largest = largest_fitting_batch(fast, args.best_batch_candidates, device)
            report("best_batch", "largest_eager_bf16", largest)
            if largest:
                fits = [b for b in args.best_batch_candidates if b <= largest]
                measure_best_batch(fast, "fast", fits, device, report)
                if fp8 is not None and args.fp8_best_batch:
                    fast.to("cpu")
                    free_memory(device)
                    measure_best_batch(fp8.to(device), "fp8", fits, device, report)

    report("setup", "total_s", round(time.perf_counter() - started, 1))
    table = summary_table(report.data)
    report.data["table_markdown"] = table
    report.write()
    print("\n" + "=" * 78)
    for section, values in report.data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                print(f"{section:45s} {key:42s} {value}")
    print("\n" + table)
    print("FLOP floor per chunk, batch 1, H100: 6.57 TFLOP / 790 TFLOP/s = 8.3 ms (docs/method.md §6.2)")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
