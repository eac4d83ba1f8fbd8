"""Speed and memory of one GFDM (Stage 1) training step at the official size, random weights.

The step is the trainer's: EDM v-objective on the full SVD UNet (1.52 B parameters, all trained), AdamW,
grad-norm clip 1.0, mixed precision through autocast (fp16 with a grad scaler, as officially, or bf16),
optional gradient checkpointing; optionally the frozen VAE encoder (fp16) turns 256 x 256 frames into the
latents first (training from raw video instead of the latent cache).

Prints one row per variant: per-GPU batch, step time (median, p90), samples/s (videos of 16 frames), peak
memory; ``--out`` writes JSON.

    python benchmarks/bench_gfdm_step.py                    # GPU, official size (batch 6, 16 frames, 32x32)
    python benchmarks/bench_gfdm_step.py --tiny=true        # CPU smoke run with the tiny preset's networks
"""

import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.models.edm import sample_log_normal_sigmas
from lerobot_defi.models.gfdm_video import encode_video_latents, gfdm_v_objective_loss
from lerobot_defi.models.reference_architectures import SVD_UNET, SVD_VAE

TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "gfdm_tiny.yaml"


def build(tiny: bool, device: torch.device):
    if tiny:
        import yaml

        model = yaml.safe_load(TINY_PRESET.read_text())["model"]
        unet_config, vae_config, frames, size, context_dim = (
            model["unet_config"],
            model["vae_config"],
            4,
            64,
            64,
        )
    else:
        unet_config, vae_config, frames, size, context_dim = SVD_UNET, SVD_VAE, 16, 256, 1024
    torch.manual_seed(0)
    # Random initialisation directly on the device; .to() moves what legacy torch.Tensor(...) left on the CPU.
    with device:
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config).to(device)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
    vae_dtype = torch.float16 if device.type == "cuda" else torch.float32
    vae = torch.nn.Module.to(vae, device, vae_dtype).eval().requires_grad_(False)
    return unet, vae, frames, size, context_dim


def bench_variant(
    unet, vae, *, batch, frames, size, context_dim, precision, checkpointing, raw, steps, warmup
):
    device = next(unet.parameters()).device
    cuda = device.type == "cuda"
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if precision != "fp32" else nullcontext()
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = size // down
    pixels = torch.randint(0, 255, (batch * frames, 3, size, size), dtype=torch.uint8, device=device)
    cached = torch.randn(batch, frames, 4, latent, latent, device=device)
    context = torch.randn(batch, 20, context_dim, device=device)
    ids = torch.tensor([[7.0, 127.0, 0.0]], device=device).expand(batch, -1)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        if raw:
            clean = encode_video_latents(vae, pixels.float() / 127.5 - 1).reshape(
                batch, frames, 4, latent, latent
            )
        else:
            clean = cached
        sigmas = sample_log_normal_sigmas(batch, 0.7, 1.6, device=device)
        with autocast:
            loss = gfdm_v_objective_loss(unet, clean, clean[:, 0] / 0.18215, context, ids, sigmas).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del optimizer
    median = statistics.median(times)
    return {
        "batch": batch,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "input": "raw frames + VAE" if raw else "cached latents",
        "step_ms_median": 1000 * median,
        "step_ms_p90": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
        "samples_per_s": batch / median,
        "peak_memory_gib": peak,
        "loss": loss.item(),
    }


Precision = Literal["fp16", "bf16", "fp32"]


@dataclass
class BenchGFDMStepConfig:
    """Speed and memory of one GFDM (Stage 1) training step at the official size, random weights."""

    # Tiny preset networks (configs/gfdm_tiny.yaml, 4 frames of 64x64) on the CPU: a smoke run of this script.
    tiny: bool = False
    # Per-GPU batches (videos) to time (default: [2] with --tiny=true, else [6]).
    batch_sizes: list[int] | None = None
    # Autocast precisions to time on a GPU (fp16 with a grad scaler); the CPU always runs fp32.
    precisions: list[Precision] = field(default_factory=lambda: ["fp16", "bf16"])
    # Also time without gradient checkpointing (it is always timed with it).
    no_checkpointing_too: bool = False
    # Also time with the VAE encoding raw frames inside the step (it is always timed from cached latents).
    raw_frames_too: bool = False
    # Timed steps per variant (median and p90 reported).
    steps: int = 10
    # Untimed steps before them.
    warmup: int = 3
    # Write the results as JSON here.
    out: Path | None = None


def main():
    args = parse_or_exit(BenchGFDMStepConfig)

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unet, vae, frames, size, context_dim = build(args.tiny, device)
    params = sum(p.numel() for p in unet.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"GFDM step | {name} | UNet {params / 1e6:.1f} M params | {frames} frames at {size}x{size}")
    precisions = ["fp32"] if device.type == "cpu" else args.precisions
    variants = [
        dict(precision=p, checkpointing=ckpt, raw=raw, batch=b)
        for b in args.batch_sizes or ([2] if args.tiny else [6])
        for p in precisions
        for ckpt in ([True, False] if args.no_checkpointing_too else [True])
        for raw in ([False, True] if args.raw_frames_too else [False])
    ]
    results = []
    header = f"{'batch':>5} {'prec':>5} {'ckpt':>5} {'input':>16} {'ms med':>8} {'ms p90':>8} {'samples/s':>9} {'peak GiB':>8}"
    print(header)
    for variant in variants:
        try:
            row = bench_variant(
                unet,
                vae,
                frames=frames,
                size=size,
                context_dim=context_dim,
                steps=args.steps,
                warmup=args.warmup,
                **variant,
            )
        except torch.OutOfMemoryError:
            row = {
                **variant,
                "input": "raw frames + VAE" if variant["raw"] else "cached latents",
                "oom": True,
            }
            torch.cuda.empty_cache()
            print(
                f"{variant['batch']:>5} {variant['precision']:>5} {variant['checkpointing']!s:>5} {row['input']:>16}   out of memory"
            )
            results.append(row)
            continue
        results.append(row)
        print(
            f"{row['batch']:>5} {row['precision']:>5} {row['gradient_checkpointing']!s:>5} {row['input']:>16} "
            f"{row['step_ms_median']:>8.1f} {row['step_ms_p90']:>8.1f} {row['samples_per_s']:>9.2f} "
            f"{row['peak_memory_gib']:>8.2f}"
        )
        unet.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps({"device": name, "unet_params": params, "results": results}, indent=2))


if __name__ == "__main__":
    main()
