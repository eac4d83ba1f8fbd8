"""``lerobot-defi-train-gidm``: pretrain the latent inverse-dynamics model (GIDM, spec section 3).

Frame pairs ``(t, t + gap)`` of one camera are drawn from a weighted mixture of LeRobotDatasets; frozen DINOv2
patch tokens of both frames and frozen T5 tokens of the instruction feed the :class:`LatentActionModel`
(spatio-temporal encoder -> VQ -> spatial decoder), trained on reconstruction + codebook + commitment losses
with dead codes reset once per epoch. Runs on one or many processes through accelerate; resumable::

    lerobot-defi-train-gidm --config_path=gidm_tiny.yaml \\
        --datasets='[{repo_id: calvin_debug, root: /data/calvin_lerobot, gap: 5}]' --output_dir=outputs/gidm
    accelerate launch --multi_gpu --num_processes=8 $(which lerobot-defi-train-gidm) \\
        --config_path=gidm_official.yaml --datasets=... --output_dir=outputs/gidm \\
        [--resume=true] [--push-to-hub --hub_repo_id=<user>/<name>]

``<output_dir>/``: ``metrics.jsonl`` (losses, codebook usage/perplexity, samples/s), ``checkpoints/<step>/``
(accelerate state for ``--resume``), ``model/`` (written at the end, atomically: ``config.json`` +
``model.safetensors`` of the whole GIDM, ``README.md`` model card, ``gidm_training.json`` with the frozen
encoders and data it was trained with, ``latent_actions.png/json`` -- which frame pairs share a latent
action). The DeFI policy takes the encoder side with ``--policy.gidm_path=<output_dir>/model`` (or the Hub id).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.pretrain.common import (
    MetricsLog,
    MixtureDataset,
    MixtureSampler,
    atomic_directory,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    parse_config,
    push_folder_to_hub,
    save_checkpoint,
    seed_process,
    write_model_card,
)
from lerobot_defi.pretrain.gidm_codebook import CodebookMonitor
from lerobot_defi.pretrain.gidm_data import (
    END_OF_EPISODE_MODES,
    GAP_SAMPLING_MODES,
    MISSING_TASK_MODES,
    FramePairDataset,
    FramePairSourceConfig,
    PairAugmentation,
    describe_sources,
    open_metadata,
    split_episodes,
)
from lerobot_defi.pretrain.gidm_features import (
    DINOV2_OFFICIAL_ID,
    T5_OFFICIAL_ID,
    DinoPatchFeatures,
    T5InstructionFeatures,
    build_frozen_encoders,
    encode_pair_features,
)

logger = logging.getLogger("lerobot_defi.pretrain.train_gidm")  # also when run with `python -m`

MODEL_DIR = "model"
TRAINING_INFO_FILE = "gidm_training.json"
METRICS_FILE = "metrics.jsonl"
LOSS_KEYS = ("loss", "reconstruction_loss", "code_loss", "commitment_loss")


@dataclass
class AugmentationConfig:
    """Train-time augmentation, identical for both frames of a pair (official values, spec 3.3)."""

    enable: bool = True
    crop_area: float = 0.9
    brightness: float = 0.2
    contrast: list[float] = field(default_factory=lambda: [0.8, 1.2])
    saturation: list[float] = field(default_factory=lambda: [0.8, 1.2])
    hue: float = 0.05


@dataclass
class GIDMTrainConfig:
    """Everything of a GIDM pretraining run (defaults = official recipe where the spec gives one)."""

    datasets: list[FramePairSourceConfig] = field(default_factory=list)
    output_dir: str = "outputs/train_gidm"
    # Architecture; `num_patches` and `text_dim` are taken from the frozen encoders, `model_dim` must equal
    # the DINOv2 hidden size.
    model: GIDMConfig = field(default_factory=GIDMConfig)
    # Frozen encoders: Hub id / folder, or (path null) a config dict for random weights (tests, demo).
    dinov2_path: str | None = DINOV2_OFFICIAL_ID
    dinov2_config: dict | None = None
    t5_path: str | None = T5_OFFICIAL_ID
    t5_config: dict | None = None
    image_size: int = 224
    # Data (see gidm_data): official behaviour by default.
    gap_sampling: str = "per_run"
    end_of_episode: str = "clamp"
    missing_task: str = "skip"
    normalize_instructions: bool = True
    # Official `balance_weights`: mixture weight x number of pairs of the dataset, renormalised.
    balance_weights: bool = True
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    # Optimisation (official: per-GPU batch 64 on 8 GPUs, AdamW 1e-4 constant, wd 0.01, clip 0.1, 16-mixed).
    batch_size: int = 64
    steps: int = 100_000
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip_norm: float | None = 0.1
    mixed_precision: str = "no"  # "no" | "fp16" (official "16-mixed") | "bf16"
    # Dead-code reset every N steps; null = at the end of every epoch (official).
    codebook_reset_every: int | None = None
    seed: int = 42
    num_workers: int = 4
    log_every: int = 50
    save_every: int = 20_000
    keep_last_checkpoints: int | None = None
    # Validation loss on the datasets' `val_episodes` (skipped when no dataset has any).
    eval_every: int = 2_000
    eval_batches: int = 8
    resume: bool = False
    # The visual check written next to the model: how many pairs to encode and group by latent action.
    inspect_pairs: int = 64
    report_to: str | None = None  # accelerate tracker ("tensorboard", "wandb") in addition to metrics.jsonl
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    hub_private: bool | None = None

    def validate(self) -> None:
        """Checks across fields (run before training; draccus would hide errors raised while parsing)."""
        if not self.datasets:
            raise ValueError("no dataset given: --datasets='[{repo_id: ..., root: ..., gap: ...}, ...]'")
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("--push-to-hub needs --hub_repo_id=<user>/<name>")
        for name, value, allowed in (
            ("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16")),
            ("gap_sampling", self.gap_sampling, GAP_SAMPLING_MODES),
            ("end_of_episode", self.end_of_episode, END_OF_EPISODE_MODES),
            ("missing_task", self.missing_task, MISSING_TASK_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"--{name} must be one of {allowed}, got {value!r}")
        if self.batch_size < 1 or self.steps < 1:
            raise ValueError(f"batch_size and steps must be >= 1, got {self.batch_size}, {self.steps}")


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------
def resolve_model_config(
    model: GIDMConfig, dino: DinoPatchFeatures, t5: T5InstructionFeatures, image_size: int
) -> GIDMConfig:
    """The GIDM architecture with ``num_patches``/``text_dim`` taken from the frozen encoders."""
    if model.model_dim != dino.hidden_size:
        raise ValueError(
            f"model.model_dim={model.model_dim} must equal the DINOv2 hidden size {dino.hidden_size} (the encoder "
            "reads DINOv2 patch tokens directly, as the official GIDM: 768 for DINOv2-B/14)"
        )
    values = {**asdict(model), "num_patches": dino.num_patches(image_size), "text_dim": t5.hidden_size}
    return GIDMConfig(**values)


def build_pair_datasets(cfg: GIDMTrainConfig) -> tuple[list[FramePairDataset], list[FramePairDataset]]:
    """Training pairs (augmented) and validation pairs (not augmented) of every configured dataset."""
    aug = cfg.augmentation
    train_aug = PairAugmentation(
        cfg.image_size,
        augment=aug.enable,
        crop_area=aug.crop_area,
        brightness=aug.brightness,
        contrast=tuple(aug.contrast),
        saturation=tuple(aug.saturation),
        hue=aug.hue,
    )
    options = {
        "image_size": cfg.image_size,
        "gap_sampling": cfg.gap_sampling,
        "end_of_episode": cfg.end_of_episode,
        "missing_task": cfg.missing_task,
        "normalize_instructions": cfg.normalize_instructions,
        "seed": cfg.seed,
    }
    train, val = [], []
    for source in cfg.datasets:
        train_episodes, val_episodes = split_episodes(source, open_metadata(source).total_episodes)
        train.append(FramePairDataset(source, augmentation=train_aug, episodes=train_episodes, **options))
        if val_episodes:
            val.append(FramePairDataset(source, episodes=val_episodes, **options))
    return train, val


def mixture_weights(datasets: list[FramePairDataset], balance: bool) -> list[float]:
    """Sampling probability of each dataset: ``weight`` (x number of pairs when ``balance``), normalised."""
    raw = [d.source.weight * (len(d) if balance else 1.0) for d in datasets]
    return [w / sum(raw) for w in raw]


def collate_pairs(items: list[dict]) -> dict:
    """``frames (B, 2, 3, S, S)``, ``task`` list[str], integer fields as ``(B,)`` tensors."""
    batch = {"frames": torch.stack([it["frames"] for it in items]), "task": [it["task"] for it in items]}
    for key in ("gap", "episode_index", "frame_index", "source_index"):
        batch[key] = torch.tensor([it[key] for it in items])
    return batch


def gidm_loss(model, dino, t5, batch: dict, device: torch.device) -> dict[str, Tensor]:
    """One forward pass of the GIDM on a collated batch: the model's outputs (losses, indices, ...)."""
    visual, text, mask = encode_pair_features(
        dino, t5, batch["frames"].to(device, non_blocking=True), batch["task"]
    )
    return model(visual, text, mask)


def _reduce_mean(accelerator, values: dict[str, float | Tensor], count: int) -> dict[str, float]:
    """Mean of per-step sums (floats or 0-d tensors) over steps and processes."""
    device = accelerator.device
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values.values()])
    packed = torch.cat([packed, torch.tensor([float(count)], dtype=torch.float64, device=device)])
    packed = accelerator.reduce(packed, reduction="sum")
    return {k: float(v) / max(float(packed[-1]), 1.0) for k, v in zip(values, packed[:-1].tolist())}


@torch.no_grad()
def evaluate(accelerator, model, dino, t5, loader: DataLoader, max_batches: int) -> dict[str, float]:
    """Mean losses over the first ``max_batches`` validation batches of every process."""
    model.eval()
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    count = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        with accelerator.autocast():
            out = gidm_loss(model, dino, t5, batch, accelerator.device)
        for key in LOSS_KEYS:
            sums[key] += float(out[key])
        count += 1
    model.train()
    return {f"val_{k}": v for k, v in _reduce_mean(accelerator, sums, count).items()}


def _training_state_matches(state: dict, gaps: dict[str, list[int]], cfg: GIDMTrainConfig) -> None:
    if state.get("gaps") != gaps or state.get("batch_size") != cfg.batch_size:
        raise ValueError(
            f"cannot resume: the checkpoint was trained with gaps {state.get('gaps')} and batch size "
            f"{state.get('batch_size')}, this run has {gaps} and {cfg.batch_size} (same datasets, seed and "
            "batch size are needed to continue the data order)"
        )


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def train(cfg: GIDMTrainConfig) -> Path:
    """Run (or resume) the training described by ``cfg``; returns the exported model folder."""
    cfg.validate()
    output_dir = Path(cfg.output_dir)
    accelerator = make_accelerator(cfg.mixed_precision, log_with=cfg.report_to, project_dir=output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Progress and data reports from the main process only (other processes: errors).
    logging.getLogger("lerobot_defi").setLevel(logging.INFO if accelerator.is_main_process else logging.ERROR)
    if not cfg.resume and latest_checkpoint(output_dir) is not None:
        raise FileExistsError(
            f"{output_dir} already holds checkpoints; pass --resume=true to continue, or another --output_dir"
        )
    checkpoint = latest_checkpoint(output_dir) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {output_dir}/checkpoints")
    seed_process(cfg.seed, accelerator)
    device = accelerator.device

    train_sets, val_sets = build_pair_datasets(cfg)  # first: data errors surface before any model loads
    dino, t5 = build_frozen_encoders(cfg.dinov2_path, cfg.dinov2_config, cfg.t5_path, cfg.t5_config, cfg.seed)
    dino.to(device)
    t5.to(device)
    model_config = resolve_model_config(cfg.model, dino, t5, cfg.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        model = LatentActionModel(model_config)

    weights = mixture_weights(train_sets, cfg.balance_weights)
    sources = describe_sources(train_sets)
    for line, w in zip(sources, weights):
        logger.info(
            "dataset %s: %d pairs, gap %s, camera %s, p=%.3f",
            line["repo_id"],
            line["pairs"],
            line["gap"],
            line["camera_key"],
            w,
        )
    gaps = {d.source.repo_id: d.gaps for d in train_sets}
    mixture = MixtureDataset(train_sets)
    rank, world = accelerator.process_index, accelerator.num_processes
    # An epoch holds as many pairs as the mixture (official: one pass over the interleaved datasets).
    sampler = MixtureSampler(
        mixture.sizes, weights, num_samples=len(mixture), seed=cfg.seed, rank=rank, world_size=world
    )
    if sampler.samples_per_rank < cfg.batch_size:
        raise ValueError(
            f"the mixture has {len(mixture)} pairs, {sampler.samples_per_rank} per process: fewer than one batch "
            f"of {cfg.batch_size}; lower --batch_size or add data"
        )
    loader_options = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "collate_fn": collate_pairs,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.num_workers > 0,
    }
    loader = DataLoader(mixture, sampler=sampler, drop_last=True, **loader_options)
    val_loader = None
    if val_sets:
        val_mixture = MixtureDataset(val_sets)
        val_sampler = MixtureSampler(
            val_mixture.sizes,
            mixture_weights(val_sets, cfg.balance_weights),
            num_samples=len(val_mixture),
            seed=cfg.seed,
            rank=rank,
            world_size=world,
        )
        val_options = {**loader_options, "num_workers": 0, "persistent_workers": False}
        val_loader = DataLoader(val_mixture, sampler=val_sampler, **val_options)
    batches_per_epoch = sampler.samples_per_rank // cfg.batch_size
    reset_every = cfg.codebook_reset_every or batches_per_epoch

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    quantizer = accelerator.unwrap_model(model).encoder.quantizer
    monitor = CodebookMonitor(model_config.codebook_size)
    metrics = MetricsLog(output_dir / METRICS_FILE, accelerator)

    step, epoch, batch_in_epoch = 0, 0, 0
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        _training_state_matches(state, gaps, cfg)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if len(state["codebook_counts"]) == world:
            monitor.load_state_dict({k: torch.tensor(v) for k, v in state["codebook_counts"][rank].items()})
        metrics.truncate_after(step)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)", checkpoint, step, epoch, batch_in_epoch
        )
    if accelerator.is_main_process:
        logger.info(
            "GIDM %.1f M trainable parameters, %d processes x batch %d, %d batches per epoch, codebook reset "
            "every %d steps",
            sum(p.numel() for p in model.parameters()) / 1e6,
            world,
            cfg.batch_size,
            batches_per_epoch,
            reset_every,
        )

    sums, window_steps, window_start = dict.fromkeys(LOSS_KEYS, 0.0), 0, time.perf_counter()
    progress = tqdm(total=cfg.steps, initial=step, desc="GIDM", disable=not accelerator.is_main_process)
    model.train()
    while step < cfg.steps:
        sampler.set_epoch(epoch, skip=batch_in_epoch * cfg.batch_size)
        for batch in loader:
            with accelerator.autocast():
                out = gidm_loss(model, dino, t5, batch, device)
            accelerator.backward(out["loss"])
            if cfg.grad_clip_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, batch_in_epoch = step + 1, batch_in_epoch + 1
            monitor.update(out["indices"])
            for key in LOSS_KEYS:  # summed on the device: no host sync per step
                sums[key] = sums[key] + out[key].detach().float()
            window_steps += 1
            progress.update(1)

            end_of_epoch = batch_in_epoch == batches_per_epoch
            log_now = step % cfg.log_every == 0 or step == cfg.steps
            line: dict[str, float] = {}
            if (cfg.codebook_reset_every and step % reset_every == 0) or (
                not cfg.codebook_reset_every and end_of_epoch
            ):
                counts = accelerator.reduce(monitor.since_reset.to(device), reduction="sum")
                generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                line["codes_reset"] = monitor.reset_dead_codes(quantizer, generator, counts)
                log_now = True
            if log_now:
                window = accelerator.reduce(monitor.window.to(device), reduction="sum")
                elapsed = time.perf_counter() - window_start
                line.update(_reduce_mean(accelerator, sums, window_steps))
                if not math.isfinite(line["loss"]):
                    raise FloatingPointError(f"GIDM loss is {line['loss']} over steps up to {step}")
                line.update(monitor.window_stats(window))
                line["samples_per_s"] = window_steps * cfg.batch_size * world / max(elapsed, 1e-9)
                line["epoch"] = epoch + batch_in_epoch / batches_per_epoch
                metrics.log(step, **line)
                progress.set_postfix(loss=f"{line['loss']:.4f}", ppl=f"{line['codebook_perplexity']:.1f}")
                sums, window_steps, window_start = dict.fromkeys(LOSS_KEYS, 0.0), 0, time.perf_counter()
            if val_loader is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics.log(step, **evaluate(accelerator, model, dino, t5, val_loader, cfg.eval_batches))
            if end_of_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            if step % cfg.save_every == 0 or step == cfg.steps:
                all_counts = accelerator.gather(
                    torch.stack([monitor.window, monitor.since_reset])[None].to(device)
                ).cpu()  # (processes, 2, codebook_size)
                extra = {
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "gaps": gaps,
                    "batch_size": cfg.batch_size,
                    "codebook_counts": [
                        {"window": c[0].tolist(), "since_reset": c[1].tolist()} for c in all_counts
                    ],
                }
                save_checkpoint(accelerator, output_dir, step, extra, keep_last=cfg.keep_last_checkpoints)
            if step >= cfg.steps or end_of_epoch:
                break
    progress.close()
    _check_processes_agree(accelerator, model)

    model_dir = output_dir / MODEL_DIR
    if accelerator.is_main_process:
        export_model(
            cfg,
            accelerator.unwrap_model(model),
            model_dir,
            train_sets,
            val_sets,
            weights,
            dino,
            t5,
            read_last_metrics(output_dir / METRICS_FILE),
        )
        if cfg.push_to_hub:
            url = push_folder_to_hub(
                model_dir,
                cfg.hub_repo_id,
                private=cfg.hub_private,
                commit_message=f"GIDM after {cfg.steps} steps",
            )
            logger.info("pushed %s to %s", model_dir, url)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return model_dir


def _check_processes_agree(accelerator, model) -> None:
    """All processes must end with the same weights (DDP + identical codebook resets); raise if not."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = accelerator.gather(checksum[None].to(accelerator.device)).cpu()
    if not torch.allclose(sums, sums[0].expand_as(sums), rtol=0, atol=0):
        raise RuntimeError(
            f"GIDM weights differ between processes after training (checksums {sums.tolist()})"
        )
    logger.info("weights identical on all %d processes", accelerator.num_processes)


def read_last_metrics(path: Path) -> dict[str, float]:
    """The latest value of every metric in a metrics.jsonl file."""
    last: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            last.update(json.loads(line))
    last.pop("step", None)
    return last


MODEL_CARD_USAGE = """Load the whole model (encoder + reconstruction decoder):

```python
from lerobot_defi.models.gidm import LatentActionModel
gidm = LatentActionModel.from_pretrained("{where}")
```

Initialise the latent-action encoder of a DeFI policy from it (the policy reports which tensors it took):

```bash
lerobot-train --policy.type=defi --policy.gidm_path={where} ...
```

The encoder reads DINOv2 patch tokens during pretraining; inside the policy it reads projected GFDM features.
`gidm_training.json` records the frozen encoders, image size and frame gaps used here; `latent_actions.png`
shows frame pairs grouped by the latent action the model gives them."""


def export_model(
    cfg: GIDMTrainConfig,
    model: LatentActionModel,
    model_dir: Path,
    train_sets: list[FramePairDataset],
    val_sets: list[FramePairDataset],
    weights: list[float],
    dino: DinoPatchFeatures,
    t5: T5InstructionFeatures,
    final_metrics: dict[str, float],
) -> None:
    """Write the model folder atomically: weights + config, training record, visual check, model card."""
    from lerobot_defi.pretrain.gidm_inspect import write_inspection

    model = model.float().eval()
    with atomic_directory(model_dir) as tmp:
        model.save_pretrained(tmp)
        info = {
            "steps": cfg.steps,
            "image_size": cfg.image_size,
            "dinov2_path": cfg.dinov2_path,
            "dinov2_config": cfg.dinov2_config,
            "t5_path": cfg.t5_path,
            "t5_config": cfg.t5_config,
            "seed": cfg.seed,
            "normalize_instructions": cfg.normalize_instructions,
            "gap_sampling": cfg.gap_sampling,
            "datasets": [
                {**line, "probability": w} for line, w in zip(describe_sources(train_sets), weights)
            ],
            "final_metrics": final_metrics,
        }
        (tmp / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2))
        inspection = write_inspection(
            model,
            dino,
            t5,
            _inspection_datasets(train_sets, val_sets, cfg),
            tmp,
            num_pairs=cfg.inspect_pairs,
            batch_size=min(cfg.batch_size, 32),
        )
        card_metrics = {k: v for k, v in final_metrics.items() if k not in ("codes_reset", "epoch")}
        card_metrics["distinct latent actions in the visual check"] = inspection["distinct_latent_actions"]
        write_model_card(
            tmp,
            title="DeFI GIDM (latent inverse-dynamics model)",
            summary=(
                "VQ latent-action model of DeFI stage 2 (spatio-temporal transformer encoder over frozen DINOv2 "
                "patch tokens of two frames and T5 instruction tokens, codebook "
                f"{model.config.codebook_size}x{model.config.latent_dim}, {model.config.num_latent_tokens} "
                "tokens per latent action, spatial reconstruction decoder), trained with "
                "`lerobot-defi-train-gidm`."
            ),
            datasets=[replace(d.source, weight=w) for d, w in zip(train_sets, weights)],
            steps=cfg.steps,
            config=json.loads(json.dumps(asdict(cfg))),
            metrics=card_metrics,
            usage=MODEL_CARD_USAGE.format(where=cfg.hub_repo_id or str(model_dir)),
            library_name="lerobot_defi",
            tags=["gidm", "latent-action-model"],
        )
    logger.info("GIDM written to %s", model_dir)


def _inspection_datasets(
    train_sets: list[FramePairDataset], val_sets: list[FramePairDataset], cfg: GIDMTrainConfig
) -> list[FramePairDataset]:
    """Per dataset: its validation pairs when it has any, else its training pairs without augmentation."""
    val_by_id = {d.source.repo_id: d for d in val_sets}
    chosen = []
    for d in train_sets:
        if d.source.repo_id in val_by_id:
            chosen.append(val_by_id[d.source.repo_id])
        else:
            plain = copy.copy(d)  # shares the opened LeRobotDataset
            plain.augmentation = PairAugmentation(cfg.image_size, augment=False)
            chosen.append(plain)
    return chosen


def main(argv: list[str] | None = None) -> None:
    train(parse_config(GIDMTrainConfig, argv))


if __name__ == "__main__":
    main()
