"""Speed and memory of one GIDM pretraining step at the official size (random weights, no download).

The step is the trainer's (``gidm_evaluation.gidm_loss`` + backward + gradient clip 0.1 + AdamW): frozen
DINOv2-B/14-reg patch tokens of both 224 px frames, frozen T5-base tokens (cached per instruction, as in
training), the 768-d 12+12-block GIDM with its VQ, under autocast. Data loading is not included (random frames).

Prints a table (and writes JSON with ``--out``): per batch size, median step time, samples/s, peak memory and
the time of the frozen DINOv2 forward alone.

    python benchmarks/bench_gidm_step.py --batch_sizes='[32,64,128]' --precision=bf16 --out=gidm.json  # on a GPU
    python benchmarks/bench_gidm_step.py --tiny=true                                                 # CPU smoke run
"""

import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.models.reference_architectures import DINOV2_BASE_REG, T5_BASE
from lerobot_defi.pretrain.gidm.features import build_frozen_encoders, encode_pair_features

# Only torch / transformers / huggingface_hub and draccus (the command line) are needed, no LeRobot: the script
# also runs from a plain checkout with PYTHONPATH=. on a machine that has just those.
PRESETS = Path(__file__).resolve().parents[1] / "configs"

TASKS = [
    "pick brown chip bag from middle drawer and place on counter",
    "put pot or pan from sink into drying rack",
    "open the drawer",
    "push the red block to the left",
]


def build(tiny: bool, device: str):
    """The preset's training settings, the frozen encoders and the GIDM (tiny preset or official recipe)."""
    cfg = yaml.safe_load((PRESETS / f"gidm_{'tiny' if tiny else 'official'}.yaml").read_text())
    dinov2_config = cfg["dinov2_config"] if tiny else DINOV2_BASE_REG
    t5_config = cfg["t5_config"] if tiny else T5_BASE
    dino, t5 = build_frozen_encoders(None, dinov2_config, None, t5_config, seed=0)
    image_size = cfg["image_size"]
    model_config = GIDMConfig(
        **{**cfg["model"], "num_patches": dino.num_patches(image_size), "text_dim": t5.hidden_size}
    )
    torch.manual_seed(0)
    model = LatentActionModel(model_config)
    return cfg, dino.to(device), t5.to(device), model.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_benchmark(
    tiny: bool = False,
    device: str = "cuda",
    batch_size: int = 64,
    steps: int = 10,
    warmup: int = 3,
    precision: str = "bf16",
    compile_model: bool = False,
) -> dict:
    """Time ``steps`` training steps at ``batch_size`` after ``warmup`` steps; returns the figures."""
    cfg, dino, t5, model = build(tiny, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    autocast = (
        (lambda: torch.autocast(device_type=device.split(":")[0], dtype=dtype)) if dtype else nullcontext
    )
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=float(cfg.get("learning_rate", 1e-4)),
        betas=tuple(cfg.get("adam_betas", (0.9, 0.999))),
        weight_decay=float(cfg.get("weight_decay", 0.01)),
    )
    clip = float(cfg.get("grad_clip_norm", 0.1))
    trained = torch.compile(model) if compile_model else model
    size = cfg["image_size"]
    batch = {
        "frames": torch.rand(batch_size, 2, 3, size, size, device=device),
        "task": [TASKS[i % len(TASKS)] for i in range(batch_size)],
    }
    losses = []

    def step():
        with autocast():  # = gidm_evaluation.gidm_loss
            visual, text, mask = encode_pair_features(dino, t5, batch["frames"], batch["task"])
            out = trained(visual, text, mask)
        scaler.scale(out["loss"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out["loss"].detach())

    def dino_forward():
        with autocast():
            dino(batch["frames"].flatten(0, 1))

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step_ms = median_ms(step, device, steps, warmup)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    dino_ms = median_ms(dino_forward, device, steps, 1)
    return {
        "size": "tiny" if tiny else "official",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "precision": precision,
        "compile": compile_model,
        "batch_size": batch_size,
        "step_ms": step_ms,
        "samples_per_s": batch_size / step_ms * 1e3,
        "dino_forward_ms": dino_ms,
        "peak_memory_gib": peak,
        "trainable_parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "last_loss": float(losses[-1]),
    }


Precision = Literal["bf16", "fp16", "fp32"]


@dataclass
class BenchGIDMStepConfig:
    """Speed and memory of one GIDM pretraining step at the official size (random weights, no download)."""

    # Tiny preset (configs/gidm_tiny.yaml) on the CPU: a smoke run of this script.
    tiny: bool = False
    # Torch device (default: cpu with --tiny=true or without CUDA, else cuda).
    device: str | None = None
    # Batch sizes to time, one run each (default: [8] with --tiny=true, else [64]).
    batch_sizes: list[int] | None = None
    # Autocast precision: bf16, fp16 (with a grad scaler) or fp32 (default: fp32 on the CPU, else bf16).
    precision: Precision | None = None
    # torch.compile the GIDM (not the frozen parts).
    compile: bool = False
    # Timed training steps per batch size (median reported).
    steps: int = 10
    # Untimed steps before them.
    warmup: int = 3
    # Write the results as JSON here.
    out: str | None = None


def main() -> None:
    args = parse_or_exit(BenchGIDMStepConfig)
    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    precision = args.precision or ("fp32" if device == "cpu" else "bf16")
    batch_sizes = args.batch_sizes or ([8] if args.tiny else [64])
    results = []
    for batch_size in batch_sizes:
        try:
            results.append(
                run_benchmark(args.tiny, device, batch_size, args.steps, args.warmup, precision, args.compile)
            )
        except torch.OutOfMemoryError:
            results.append({"batch_size": batch_size, "error": "out of memory"})
            torch.cuda.empty_cache()
    header = (
        f"{'batch':>6} {'step ms':>9} {'samples/s':>10} {'DINOv2 fwd ms':>14} {'peak GiB':>9} {'loss':>8}"
    )
    print(
        f"GIDM training step, {results[0].get('size', '')} size, {device}, {precision}, compile={args.compile}"
    )
    print(header)
    for r in results:
        if "error" in r:
            print(f"{r['batch_size']:>6} {r['error']}")
            continue
        print(
            f"{r['batch_size']:>6} {r['step_ms']:>9.1f} {r['samples_per_s']:>10.1f} {r['dino_forward_ms']:>14.1f} "
            f"{r['peak_memory_gib']:>9.2f} {r['last_loss']:>8.4f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
