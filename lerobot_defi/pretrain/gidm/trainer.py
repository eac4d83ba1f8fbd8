"""The GIDM training run: set-up (frame-pair mixture, frozen DINOv2 / T5, the :class:`LatentActionModel`,
AdamW under accelerate, resume state) and the loop, one optimisation step at a time with dead-code resets,
window logs, validation and checkpoints; at the end the model folder is exported (and pushed).

Data order: an epoch holds as many pairs as the mixture (official: one pass over the interleaved datasets); the
sampler is positioned by ``(epoch, batch_in_epoch)``, which checkpoints store, so a resumed run continues the
exact order. Only the main process logs, exports and pushes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.pretrain.gidm.codebook import CodebookMonitor
from lerobot_defi.pretrain.gidm.config import MODEL_DIR, GIDMTrainConfig
from lerobot_defi.pretrain.gidm.evaluation import (
    LOSS_KEYS,
    check_processes_agree,
    evaluate,
    gidm_loss,
    reduce_mean,
)
from lerobot_defi.pretrain.gidm.export import export_model
from lerobot_defi.pretrain.gidm.features import (
    DinoPatchFeatures,
    T5InstructionFeatures,
    build_frozen_encoders,
)
from lerobot_defi.pretrain.gidm.frame_pairs import (
    FramePairDataset,
    PairAugmentation,
    describe_sources,
    split_episodes,
)
from lerobot_defi.pretrain.shared.checkpoints import checkpoint_to_resume, restore_checkpoint, save_checkpoint
from lerobot_defi.pretrain.shared.metrics_log import METRICS_FILE, MetricsLog, read_last_metrics
from lerobot_defi.pretrain.shared.mixture import MixtureDataset, MixtureSampler
from lerobot_defi.pretrain.shared.publishing import push_folder_to_hub
from lerobot_defi.pretrain.shared.run_setup import make_accelerator, seed_process
from lerobot_defi.pretrain.shared.sources import open_metadata

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
class GIDMTrainer:
    """Everything a GIDM run holds; ``run()`` trains (or resumes), exports and returns the model folder."""

    def __init__(self, cfg: GIDMTrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.accelerator = acc = make_accelerator(
            cfg.mixed_precision, log_with=cfg.report_to, project_dir=self.output_dir
        )
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Progress and data reports from the main process only (other processes: errors).
        logging.getLogger("lerobot_defi").setLevel(logging.INFO if acc.is_main_process else logging.ERROR)
        self.checkpoint = checkpoint_to_resume(self.output_dir, cfg.resume)
        seed_process(cfg.seed, acc)
        self.rank, self.world = acc.process_index, acc.num_processes

        # data first: its errors surface before any model loads
        self.train_sets, self.val_sets = build_pair_datasets(cfg)
        self.dino, self.t5 = build_frozen_encoders(
            cfg.dinov2_path, cfg.dinov2_config, cfg.t5_path, cfg.t5_config, cfg.seed
        )
        self.dino.to(acc.device)
        self.t5.to(acc.device)
        model_config = resolve_model_config(cfg.model, self.dino, self.t5, cfg.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the same initial weights on every process
            model = LatentActionModel(model_config)

        self.weights = mixture_weights(self.train_sets, cfg.balance_weights)
        for line, w in zip(describe_sources(self.train_sets), self.weights):
            logger.info(
                "dataset %s: %d pairs, gap %s, camera %s, p=%.3f",
                line["repo_id"],
                line["pairs"],
                line["gap"],
                line["camera_key"],
                w,
            )
        self.gaps = {d.source.repo_id: d.gaps for d in self.train_sets}
        self._build_loaders()
        self.batches_per_epoch = self.sampler.samples_per_rank // cfg.batch_size
        self.reset_every = cfg.codebook_reset_every or self.batches_per_epoch

        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.learning_rate,
            betas=tuple(cfg.adam_betas),
            weight_decay=cfg.weight_decay,
        )
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.quantizer = acc.unwrap_model(self.model).encoder.quantizer
        self.monitor = CodebookMonitor(model_config.codebook_size)
        self.metrics = MetricsLog(self.output_dir / METRICS_FILE, acc)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        if self.checkpoint is not None:
            self._resume()
        if acc.is_main_process:
            logger.info(
                "GIDM %.1f M trainable parameters, %d processes x batch %d, %d batches per epoch, codebook reset "
                "every %d steps",
                sum(p.numel() for p in self.model.parameters()) / 1e6,
                self.world,
                cfg.batch_size,
                self.batches_per_epoch,
                self.reset_every,
            )

    # -- set-up ------------------------------------------------------------------------------------------------
    def _build_loaders(self) -> None:
        """The training loader over the weighted mixture (one epoch = as many pairs as the mixture), and the
        validation loader when some dataset has validation episodes."""
        cfg = self.cfg
        mixture = MixtureDataset(self.train_sets)
        self.sampler = MixtureSampler(
            mixture.sizes,
            self.weights,
            num_samples=len(mixture),
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world,
        )
        if self.sampler.samples_per_rank < cfg.batch_size:
            raise ValueError(
                f"the mixture has {len(mixture)} pairs, {self.sampler.samples_per_rank} per process: fewer than one "
                f"batch of {cfg.batch_size}; lower --batch_size or add data"
            )
        options = {
            "batch_size": cfg.batch_size,
            "num_workers": cfg.num_workers,
            "collate_fn": collate_pairs,
            "pin_memory": self.accelerator.device.type == "cuda",
            "persistent_workers": cfg.num_workers > 0,
        }
        self.loader = DataLoader(mixture, sampler=self.sampler, drop_last=True, **options)
        self.val_loader = None
        if self.val_sets:
            val_mixture = MixtureDataset(self.val_sets)
            val_sampler = MixtureSampler(
                val_mixture.sizes,
                mixture_weights(self.val_sets, cfg.balance_weights),
                num_samples=len(val_mixture),
                seed=cfg.seed,
                rank=self.rank,
                world_size=self.world,
            )
            val_options = {**options, "num_workers": 0, "persistent_workers": False}
            self.val_loader = DataLoader(val_mixture, sampler=val_sampler, **val_options)

    def _resume(self) -> None:
        """Restore model, optimizer, RNG states, data position and codebook counts from ``self.checkpoint``."""
        state = restore_checkpoint(self.accelerator, self.checkpoint)
        if state.get("gaps") != self.gaps or state.get("batch_size") != self.cfg.batch_size:
            raise ValueError(
                f"cannot resume: the checkpoint was trained with gaps {state.get('gaps')} and batch size "
                f"{state.get('batch_size')}, this run has {self.gaps} and {self.cfg.batch_size} (same datasets, "
                "seed and batch size are needed to continue the data order)"
            )
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if len(state["codebook_counts"]) == self.world:
            counts = state["codebook_counts"][self.rank]
            self.monitor.load_state_dict({k: torch.tensor(v) for k, v in counts.items()})
        self.metrics.truncate_after(self.step)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            self.checkpoint,
            self.step,
            self.epoch,
            self.batch_in_epoch,
        )

    # -- one step and what follows it --------------------------------------------------------------------------
    def _optimisation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Forward, backward, gradient clip, AdamW; returns the model's outputs."""
        acc = self.accelerator
        with acc.autocast():
            out = gidm_loss(self.model, self.dino, self.t5, batch, acc.device)
        acc.backward(out["loss"])
        if self.cfg.grad_clip_norm:
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def _codebook_reset_due(self, end_of_epoch: bool) -> bool:
        if self.cfg.codebook_reset_every:
            return self.step % self.reset_every == 0
        return end_of_epoch

    def _reset_dead_codes(self) -> int:
        """Dead-code reset from the counts of all processes, identical on every process (same seeded draw)."""
        counts = self.accelerator.reduce(
            self.monitor.since_reset.to(self.accelerator.device), reduction="sum"
        )
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        return self.monitor.reset_dead_codes(self.quantizer, generator, counts)

    def _window_line(self, sums: dict, window_steps: int, elapsed: float) -> dict[str, float]:
        """Mean losses, codebook usage/perplexity and speed of the steps since the last log line."""
        window = self.accelerator.reduce(self.monitor.window.to(self.accelerator.device), reduction="sum")
        line = reduce_mean(self.accelerator, sums, window_steps)
        if not math.isfinite(line["loss"]):
            raise FloatingPointError(f"GIDM loss is {line['loss']} over steps up to {self.step}")
        line.update(self.monitor.window_stats(window))
        line["samples_per_s"] = window_steps * self.cfg.batch_size * self.world / max(elapsed, 1e-9)
        line["epoch"] = self.epoch + self.batch_in_epoch / self.batches_per_epoch
        return line

    def _save(self) -> None:
        """Checkpoint with the data position, gaps and every process's codebook counts (collective)."""
        acc = self.accelerator
        all_counts = acc.gather(
            torch.stack([self.monitor.window, self.monitor.since_reset])[None].to(acc.device)
        ).cpu()  # (processes, 2, codebook_size)
        extra = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "gaps": self.gaps,
            "batch_size": self.cfg.batch_size,
            "codebook_counts": [{"window": c[0].tolist(), "since_reset": c[1].tolist()} for c in all_counts],
        }
        save_checkpoint(acc, self.output_dir, self.step, extra, keep_last=self.cfg.keep_last_checkpoints)

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        sums, window_steps, window_start = dict.fromkeys(LOSS_KEYS, 0.0), 0, time.perf_counter()
        progress = tqdm(total=cfg.steps, initial=self.step, desc="GIDM", disable=not acc.is_main_process)
        self.model.train()
        while self.step < cfg.steps:
            self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * cfg.batch_size)
            for batch in self.loader:
                out = self._optimisation_step(batch)
                self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
                self.monitor.update(out["indices"])
                for key in LOSS_KEYS:  # summed on the device: no host sync per step
                    sums[key] = sums[key] + out[key].detach().float()
                window_steps += 1
                progress.update(1)

                end_of_epoch = self.batch_in_epoch == self.batches_per_epoch
                log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
                line: dict[str, float] = {}
                if self._codebook_reset_due(end_of_epoch):
                    line["codes_reset"] = self._reset_dead_codes()
                    log_now = True
                if log_now:
                    line.update(self._window_line(sums, window_steps, time.perf_counter() - window_start))
                    self.metrics.log(self.step, **line)
                    progress.set_postfix(loss=f"{line['loss']:.4f}", ppl=f"{line['codebook_perplexity']:.1f}")
                    sums, window_steps, window_start = dict.fromkeys(LOSS_KEYS, 0.0), 0, time.perf_counter()
                if self.val_loader is not None and (
                    self.step % cfg.eval_every == 0 or self.step == cfg.steps
                ):
                    self.metrics.log(
                        self.step,
                        **evaluate(acc, self.model, self.dino, self.t5, self.val_loader, cfg.eval_batches),
                    )
                if end_of_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self._save()
                if self.step >= cfg.steps or end_of_epoch:
                    break
        progress.close()
        check_processes_agree(acc, self.model)
        return self._export_and_push()

    def _export_and_push(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        model_dir = self.output_dir / MODEL_DIR
        if acc.is_main_process:
            export_model(
                cfg,
                acc.unwrap_model(self.model),
                model_dir,
                self.train_sets,
                self.val_sets,
                self.weights,
                self.dino,
                self.t5,
                read_last_metrics(self.output_dir / METRICS_FILE),
            )
            if cfg.push_to_hub:
                url = push_folder_to_hub(
                    model_dir,
                    cfg.hub_repo_id,
                    private=cfg.hub_private,
                    commit_message=f"GIDM after {cfg.steps} steps",
                )
                logger.info("pushed %s to %s", model_dir, url)
        acc.wait_for_everyone()
        acc.end_training()
        return model_dir
