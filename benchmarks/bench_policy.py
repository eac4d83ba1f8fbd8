"""Speed and memory of the DeFI policy at the official size (random weights), reference vs fast paths.

Reference = what the original implementation runs: fp16 eager GFDM, fp32 trainable parts, instructions
re-encoded at every call, the action head's context re-computed at every solver step.
Fast = this plugin: bf16 (or fp16) frozen parts, cached instructions, context once per chunk, only the needed
UNet blocks, fused attention, optional ``torch.compile`` (``--compile_mode``), bf16 autocast of the trainable
parts (``dtype``) in training and inference.

Prints one table (and writes JSON with ``--out``): latency per chunk at batch 1 (median, p90), chunks/s at
batch 8, training samples/s at batch 8 and at the largest batch that fits, peak memory, per-component times.

    python benchmarks/bench_policy.py --compile_mode=reduce-overhead --out=results.json   # on a GPU
    python benchmarks/bench_policy.py --tiny=true                                         # CPU smoke run
"""

import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.models.edm import sample_first_order
from lerobot_defi.models.gfdm import text_context_from_clip
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


def peak_memory_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


FrozenDtype = Literal["bfloat16", "float16"]
Section = Literal["inference", "training", "components", "largest"]


@dataclass
class BenchPolicyConfig:
    """Speed and memory of the DeFI policy at the official size (random weights), reference vs fast paths."""

    # Tiny preset networks: a smoke run of this script (on the CPU without CUDA or with --device=cpu).
    tiny: bool = False
    # Torch device (default: cuda when available, else cpu).
    device: str | None = None
    # torch.compile mode of the fast path, e.g. reduce-overhead (default: eager).
    compile_mode: str | None = None
    # dtype of the fast path's frozen parts (GFDM) on a GPU; the CPU runs float32.
    frozen_dtype: FrozenDtype = "bfloat16"
    # Timed calls per measurement (training: a third of it, at least 3); 3 with --tiny=true.
    repeats: int = 30
    # What to measure: inference, training, components, largest (the largest training batch; CUDA only).
    sections: list[Section] = field(
        default_factory=lambda: ["inference", "training", "components", "largest"]
    )
    # Inference batch sizes.
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    # Write the results as JSON here (rewritten after every figure).
    out: str | None = None


def main() -> None:
    args = parse_or_exit(BenchPolicyConfig)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sections = set(args.sections)
    repeats = 3 if args.tiny else args.repeats
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    results: dict[str, dict] = {
        "setup": {
            "device": device,
            "tiny": args.tiny,
            "compile_mode": args.compile_mode,
            "frozen_dtype": args.frozen_dtype,
        }
    }

    def report(section: str, key: str, value) -> None:
        results.setdefault(section, {})[key] = value
        print(f"[{section}] {key}: {value}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    t0 = time.perf_counter()
    reference = build_policy(
        args.tiny, device, gfdm_dtype="float16" if device.startswith("cuda") else "float32"
    )
    on_gpu = device.startswith("cuda")
    fast = build_policy(
        args.tiny,
        device,
        gfdm_dtype=args.frozen_dtype if on_gpu else "float32",
        dtype="bfloat16" if on_gpu else None,  # mixed precision of the trainable parts, as trained
    )
    report("setup", "build_s", round(time.perf_counter() - t0, 1))
    if args.compile_mode:
        fast.compile_modules(args.compile_mode)
    report("setup", "trainable_M", round(sum(p.numel() for p in fast.get_optim_params()) / 1e6, 2))
    report("setup", "total_M", round(sum(p.numel() for p in fast.parameters()) / 1e6, 1))

    if "components" in sections:
        batch = make_batch(fast.config, 1, device)
        for name, ms in component_times(fast, batch, device, repeats).items():
            report("components_ms_batch1_eager_" + args.frozen_dtype, name, round(ms, 2))

    if "inference" in sections:
        reference.eval()
        sampler = ReferenceSampler(reference)
        batch_sizes = args.batch_sizes
        for batch_size in batch_sizes:
            batch = make_batch(reference.config, batch_size, device)
            reset_peak(device)
            med, p90 = timed(lambda batch=batch: sampler(batch), device, repeats, warmup=3)
            report("inference_reference", f"batch{batch_size}_median_ms", round(med, 2))
            report("inference_reference", f"batch{batch_size}_p90_ms", round(p90, 2))
            report("inference_reference", f"batch{batch_size}_peak_GiB", round(peak_memory_gib(device), 2))
        fast.eval()
        for batch_size in batch_sizes:
            batch = make_batch(fast.config, batch_size, device)
            reset_peak(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                fast.predict_action_chunk(batch)
            sync(device)
            report("inference_fast", f"batch{batch_size}_first_call_s", round(time.perf_counter() - t0, 1))
            med, p90 = timed(lambda batch=batch: fast.predict_action_chunk(batch), device, repeats, warmup=3)
            report("inference_fast", f"batch{batch_size}_median_ms", round(med, 2))
            report("inference_fast", f"batch{batch_size}_p90_ms", round(p90, 2))
            report("inference_fast", f"batch{batch_size}_peak_GiB", round(peak_memory_gib(device), 2))
            report("inference_fast", f"batch{batch_size}_chunks_per_s", round(batch_size * 1e3 / med, 1))
            ref = results["inference_reference"][f"batch{batch_size}_median_ms"]
            report("inference_reference", f"batch{batch_size}_chunks_per_s", round(batch_size * 1e3 / ref, 1))

    if "training" in sections:
        batch = make_batch(reference.config, 8, device)
        reset_peak(device)
        step = train_step_fn(reference, batch, None, reference=True)
        med, _ = timed(step, device, max(3, repeats // 3), warmup=2)
        report("training_reference_fp32", "batch8_samples_per_s", round(8e3 / med, 2))
        report("training_reference_fp32", "batch8_peak_GiB", round(peak_memory_gib(device), 2))
        autocast = torch.bfloat16 if device.startswith("cuda") else None
        reset_peak(device)
        step = train_step_fn(fast, batch, autocast, reference=False)
        t0 = time.perf_counter()
        step()
        sync(device)
        report("training_fast", "first_step_s", round(time.perf_counter() - t0, 1))
        med, _ = timed(step, device, max(3, repeats // 3), warmup=2)
        report("training_fast", "batch8_samples_per_s", round(8e3 / med, 2))
        report("training_fast", "batch8_peak_GiB", round(peak_memory_gib(device), 2))
        ratio = (
            results["training_fast"]["batch8_samples_per_s"]
            / results["training_reference_fp32"]["batch8_samples_per_s"]
        )
        report("training_fast", "speedup_vs_reference", round(ratio, 2))

    if "largest" in sections and device.startswith("cuda"):
        del reference
        torch.cuda.empty_cache()
        eager = build_policy(args.tiny, device, gfdm_dtype=args.frozen_dtype)
        best = None
        for batch_size in (16, 32, 64, 96, 128, 192, 256):
            try:
                batch = make_batch(eager.config, batch_size, device)
                reset_peak(device)
                step = train_step_fn(eager, batch, torch.bfloat16, reference=False)
                med, _ = timed(step, device, 3, warmup=1)
                best = (batch_size, batch_size * 1e3 / med, peak_memory_gib(device))
                print(f"  batch {batch_size}: {best[1]:.1f} samples/s, {best[2]:.1f} GiB", flush=True)
            except torch.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
        if best:
            report("training_largest_batch_eager_bf16", "batch_size", best[0])
            report("training_largest_batch_eager_bf16", "samples_per_s", round(best[1], 2))
            report("training_largest_batch_eager_bf16", "peak_GiB", round(best[2], 2))

    print("\n" + "=" * 78)
    for section, values in results.items():
        for key, value in values.items():
            print(f"{section:45s} {key:42s} {value}")
    print("FLOP floor per chunk, batch 1, H100: 6.57 TFLOP / 790 TFLOP/s = 8.3 ms (docs/method.md §6.2)")


if __name__ == "__main__":
    main()
