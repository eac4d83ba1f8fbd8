"""Where a compiled DeFI chunk spends its time: the GFDM feature pass (VAE encoder + truncated SVD UNet) under
several ``torch.compile`` set-ups, the rest of the chunk, and the top GPU kernels.

Official size, random weights, batch 1 (two 256x256 cameras -> 2 x 16 frames of 32x32 latents). Each variant
is compiled afresh; times are medians of CUDA-synchronised calls after warm-up.

    python benchmarks/bench_gfdm_variants.py --variants='[ro,ro_cl,ro_freeze]' --profile='[ro]'  # on a GPU
    python benchmarks/bench_gfdm_variants.py --tiny=true --variants='[eager,default]'       # CPU smoke run
"""

import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from bench_policy import after_gfdm, build_policy, make_batch, sync, timed
from torch import nn

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.models.frame_convolution import use_frame_convolutions
from lerobot_defi.models.gfdm import text_context_from_clip

# name -> (torch.compile mode or None for eager, channels-last convolutions, inductor freezing)
VARIANTS = {
    "eager": (None, False, False),
    "eager_cl": (None, True, False),
    "default": ("default", False, False),
    "default_cl": ("default", True, False),
    "ro": ("reduce-overhead", False, False),
    "ro_cl": ("reduce-overhead", True, False),
    "ro_freeze": ("reduce-overhead", False, True),
    "ro_cl_freeze": ("reduce-overhead", True, True),
    "autotune_cl": ("max-autotune", True, False),
    "autotune_cl_freeze": ("max-autotune", True, True),
}


def set_conv_layout(module: nn.Module, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def kernel_family(name: str) -> str:
    """The family of a GPU kernel (or CPU op) by its name. Triton kernels are inductor's: its GEMM templates
    (``triton_tem_``) are matrix products, kernels that compute a row's absolute maximum or feed ``_scaled_mm``
    are FP8 activation quantization (fused with the pointwise op before it), the rest fused pointwise /
    normalisation (even where named after the ``addmm`` whose epilogue they are)."""
    name = name.lower()
    if name.startswith("triton"):
        if name.startswith("triton_tem"):
            return "matmul"
        if "scaled_mm" in name or "amax" in name:
            return "fp8 activation quantization (triton)"
        return "triton (fused pointwise/norm)"
    if any(k in name for k in ("sdpa", "flash", "fmha", "attention", "efficient")):
        return "attention"
    if "implicit_gemm" in name or "conv" in name:
        return "convolution"
    if any(k in name for k in ("gemm", "gmma", "cutlass", "nvjet", "ampere", "mm_")):
        return "matmul"
    if "nchw" in name or "nhwc" in name or "transpose" in name:
        return "layout transposes"
    return "other"


def kernel_table(fn, device: str, top: int) -> tuple[str, dict[str, float]]:
    """Top kernels by total GPU time over 5 calls, and time per kernel family (ms per call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    on_gpu = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fn()
        sync(device)
    families: dict[str, float] = {}
    for event in prof.key_averages():
        us = event.device_time_total if on_gpu else event.self_cpu_time_total
        if us <= 0:
            continue
        family = kernel_family(event.key)
        families[family] = families.get(family, 0.0) + us / 5e3
    sort_by = "device_time_total" if on_gpu else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=top, max_name_column_width=70)
    return table, families


@dataclass
class BenchGFDMVariantsConfig:
    """Where a compiled DeFI chunk spends its time: the GFDM feature pass under several torch.compile set-ups."""

    # Tiny preset networks: a smoke run of this script (on the CPU without CUDA).
    tiny: bool = False
    # GFDM feature-pass variants to time, in order (names of VARIANTS: eager, eager_cl, default, default_cl, ro,
    # ro_cl, ro_freeze, ro_cl_freeze, autotune_cl, autotune_cl_freeze; cl = channels-last, ro = reduce-overhead).
    variants: list[str] = field(default_factory=lambda: ["eager", "ro", "ro_cl"])
    # What to profile kernel by kernel: variant names, "rest" (with --rest=true) and "chunk" (with --chunk).
    profile: list[str] = field(default_factory=list)
    # Also time the rest of the chunk (after the GFDM), eager and compiled (reduce-overhead, CUDA only).
    rest: bool = False
    # Also time the whole chunk with compile_modules(<this torch.compile mode>), e.g. reduce-overhead.
    chunk: str | None = None
    # GFDM variants with FrameConvolution (temporal Conv3d run as 2-D convolutions).
    frame_convolutions: bool = False
    # Timed calls per measurement (median and p90 reported).
    repeats: int = 30
    # Time budget in seconds: variants that would start after it are skipped.
    budget_s: float = 480
    # Write the results as JSON here (rewritten after every variant).
    out: str | None = None

    def __post_init__(self):
        unknown = [name for name in self.variants if name not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")


def main() -> None:
    args = parse_or_exit(BenchGFDMVariantsConfig)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    import torch._inductor.config as inductor_config

    torch.backends.cudnn.benchmark = True
    inductor_config.conv_1x1_as_mm = True
    on_gpu = device == "cuda"
    policy = build_policy(
        args.tiny,
        device,
        gfdm_dtype="bfloat16" if on_gpu else "float32",
        dtype="bfloat16" if on_gpu else None,
    ).eval()
    batch = make_batch(policy.config, 1, device)
    gfdm = policy.gfdm
    with torch.no_grad():
        inputs = policy._tensor_inputs(batch)
    images, feature_noise, clip_hidden = inputs[:3]
    context = text_context_from_clip(clip_hidden, gfdm.cross_attention_dim).repeat(2, 1, 1)
    if args.frame_convolutions:
        use_frame_convolutions(gfdm)
    results: dict[str, dict] = {}
    reference = None
    for name in args.variants:
        if time.perf_counter() - started > args.budget_s:
            print(f"skipped {name}: over the time budget", flush=True)
            continue
        mode, channels_last, freezing = VARIANTS[name]
        torch._dynamo.reset()
        inductor_config.freezing = freezing
        set_conv_layout(gfdm, channels_last)
        fn = gfdm.forward if mode is None else torch.compile(gfdm.forward, mode=mode, dynamic=False)

        def call(fn=fn, mode=mode):
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                return fn(images, context, noise=feature_noise).clone()

        t0 = time.perf_counter()
        out = call()
        sync(device)
        first = time.perf_counter() - t0
        med, p90 = timed(call, device, args.repeats, warmup=3)
        if reference is None:
            reference = out
        error = ((out - reference).norm() / reference.norm()).item()
        results[name] = {
            "median_ms": round(med, 2),
            "p90_ms": round(p90, 2),
            "first_call_s": round(first, 1),
            "rel_error_vs_first": error,
        }
        print(f"[gfdm] {name}: {results[name]}", flush=True)
        if name in args.profile:
            table, families = kernel_table(call, device, top=25)
            print(table, flush=True)
            results[name]["kernel_ms_per_call"] = {k: round(v, 2) for k, v in families.items()}
            print(
                f"[gfdm] {name} kernel families (ms/call): {results[name]['kernel_ms_per_call']}", flush=True
            )
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
    set_conv_layout(gfdm, False)
    inductor_config.freezing = False

    if args.rest:
        torch._dynamo.reset()
        with torch.no_grad():
            features = gfdm(images, context, noise=feature_noise)
        noise = torch.randn(1, policy.config.chunk_size, policy.config.action_dim, device=device)

        instructions = SimpleNamespace(clip_pooled=inputs[3], t5_hidden=inputs[4], t5_mask=inputs[5])

        def rest(features=features, noise=noise):
            ctx = after_gfdm(policy, features, instructions)
            return policy.action_head.sample(ctx, noise=noise)

        for mode in ("eager", "reduce-overhead") if device == "cuda" else ("eager",):
            fn = rest if mode == "eager" else torch.compile(rest, mode=mode, dynamic=False)

            def call(fn=fn, mode=mode):
                if mode != "eager":
                    torch.compiler.cudagraph_mark_step_begin()
                with torch.no_grad(), policy._mixed_precision(device):
                    return fn().clone()

            med, p90 = timed(call, device, args.repeats, warmup=3)
            results[f"rest_{mode}"] = {"median_ms": round(med, 2), "p90_ms": round(p90, 2)}
            print(f"[rest] {mode}: {results[f'rest_{mode}']}", flush=True)
            if mode != "eager" and "rest" in args.profile:
                table, families = kernel_table(call, device, top=15)
                print(table, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    if args.chunk:
        torch._dynamo.reset()
        policy.compile_modules(args.chunk)

        def chunk():
            with torch.no_grad():
                return policy.predict_action_chunk(batch)

        t0 = time.perf_counter()
        chunk()
        sync(device)
        first = round(time.perf_counter() - t0, 1)
        med, p90 = timed(chunk, device, args.repeats, warmup=3)
        results["chunk_" + args.chunk] = {
            "median_ms": round(med, 2),
            "p90_ms": round(p90, 2),
            "first_call_s": first,
        }
        print(f"[chunk] {results['chunk_' + args.chunk]}", flush=True)
        if "chunk" in args.profile:
            table, families = kernel_table(chunk, device, top=40)
            print(table, flush=True)
            results["chunk_" + args.chunk]["kernel_ms_per_call"] = {
                k: round(v, 2) for k, v in families.items()
            }
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    print("\n" + "=" * 78)
    for name, values in results.items():
        print(f"{name:22s} " + "  ".join(f"{k}={v}" for k, v in values.items()))


if __name__ == "__main__":
    main()
