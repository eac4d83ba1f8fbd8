"""The GFDM training run (docs/method.md §2.5, §2.6): set-up (SVD UNet trained in fp32 master weights under
accelerate's mixed precision, frozen VAE and CLIP text tower on the device in ``model.frozen_dtype``, clip
datasets and the optional latent cache, AdamW + lr schedule) and the step-based loop over an infinite weighted
mixture: optimisation step, window logs, validation, checkpoints, exports.

The per-step data flow is in ``train_gfdm.py``'s docstring. The data order and RNG streams continue exactly on
``--resume`` (the sampler skips what was consumed).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm import tqdm

from lerobot_defi.models.gfdm import diffusers_config
from lerobot_defi.models.text import InstructionEncoders
from lerobot_defi.pretrain.gfdm.clip_dataset import build_clip_datasets, collate_clips
from lerobot_defi.pretrain.gfdm.config import FROZEN_DTYPES, TrainGFDMConfig
from lerobot_defi.pretrain.gfdm.export import EXPORT_DIR, export_gfdm_folder
from lerobot_defi.pretrain.gfdm.latent_cache import encode_missing_latents
from lerobot_defi.pretrain.gfdm.objective import GFDMObjective
from lerobot_defi.pretrain.gfdm.parts import load_gfdm_parts
from lerobot_defi.pretrain.gfdm.validation import validation_losses, write_sample_videos
from lerobot_defi.pretrain.shared.checkpoints import checkpoint_to_resume, restore_checkpoint, save_checkpoint
from lerobot_defi.pretrain.shared.metrics_log import METRICS_FILE, MetricsLog
from lerobot_defi.pretrain.shared.mixture import MixtureDataset, MixtureSampler
from lerobot_defi.pretrain.shared.publishing import push_folder_to_hub
from lerobot_defi.pretrain.shared.run_setup import make_accelerator, seed_process

# Logs from the main process only unless a call says main_process_only=False.
logger = get_logger(__name__)


class GFDMTrainer:
    """Holds the prepared models (the ``objective``) and data; ``run()`` is the training loop."""

    def __init__(self, cfg: TrainGFDMConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.accelerator = make_accelerator(
            cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.report_to, self.output_dir
        )
        acc = self.accelerator
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)  # identical initial weights on every process
        self.parts = load_gfdm_parts(cfg.model)
        frozen = FROZEN_DTYPES[cfg.model.frozen_dtype]
        device = acc.device
        # nn.Module.to: diffusers' own .to() warns about dtype casts meant for from_pretrained.
        self.vae = torch.nn.Module.to(copy.deepcopy(self.parts.vae), device, frozen)
        self.text = InstructionEncoders(
            copy.deepcopy(self.parts.text_encoder).to(device, frozen),
            self.parts.tokenizer,
            None,
            None,
            context_length=cfg.model.clip_context_length,
        )
        unet = self.parts.unet
        unet.train()
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()

        with acc.main_process_first():
            cache_dir = None
            if cfg.latent_cache.enabled:
                cache_dir = Path(cfg.latent_cache.dir or self.output_dir / "latent_cache")
            downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.train_sets, val_sets = build_clip_datasets(
                cfg.datasets, cfg.num_frames, cfg.image_size, cache_dir, downsample
            )
        self.val_sets = [(i, d) for i, d in enumerate(val_sets) if d is not None]
        if cfg.latent_cache.enabled:
            self._check_cache_info(cache_dir)
            self._fill_latent_cache()
        self.metrics = MetricsLog(self.output_dir / METRICS_FILE, acc)
        self.last_val: dict[str, float] = {}
        self.cache_only = cfg.latent_cache.enabled and cfg.latent_cache.only
        if not self.cache_only:
            self._prepare_optimisation(unet)

    def _prepare_optimisation(self, unet) -> None:
        """AdamW over the whole UNet and the lr schedule, prepared by accelerate (which steps the schedule once per
        process at each optimisation step, hence the step counts times the process count)."""
        from diffusers.optimization import get_scheduler

        cfg, acc = self.cfg, self.accelerator
        optimizer = torch.optim.AdamW(
            unet.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=cfg.steps * acc.num_processes,
        )
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(unet, optimizer, lr_scheduler)
        self.objective = GFDMObjective(
            acc, self.unet, self.vae, self.text, cfg.objective, cfg.latent_cache.frames_per_batch
        )

    # -- data --------------------------------------------------------------------------------------------------
    def _check_cache_info(self, cache_dir: Path) -> None:
        """Latents are only valid for the VAE, frame size and posterior rule they were made with: record these
        in ``<cache>/latent_cache_info.json`` and refuse a cache made differently."""
        info = {
            "vae": self.cfg.model.pretrained_path,
            "vae_config": diffusers_config(self.parts.vae),
            "image_size": self.cfg.image_size,
            "sample_posterior": self.cfg.latent_cache.sample_posterior,
        }
        info = json.loads(json.dumps(info))
        path = cache_dir / "latent_cache_info.json"
        if self.accelerator.is_main_process and not path.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(info, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        stored = json.loads(path.read_text())
        different = sorted(k for k in info if stored.get(k) != info[k])
        if different:
            raise ValueError(
                f"latent cache {cache_dir} was made with different {different} ({path}); use another "
                "--latent_cache.dir or delete the cache to re-encode"
            )

    def _fill_latent_cache(self) -> None:
        acc = self.accelerator
        datasets = self.train_sets + [d for _, d in self.val_sets]
        written = encode_missing_latents(
            datasets,
            self.vae,
            rank=acc.process_index,
            world_size=acc.num_processes,
            frames_per_batch=self.cfg.latent_cache.frames_per_batch,
            sample_posterior=self.cfg.latent_cache.sample_posterior,
            seed=self.cfg.seed,
            show_progress=acc.is_local_main_process,
        )
        logger.info("process %d encoded %d latent files", acc.process_index, written, main_process_only=False)
        acc.wait_for_everyone()

    def train_loader(self, samples_seen: int) -> DataLoader:
        acc = self.accelerator
        sampler = MixtureSampler(
            [len(d) for d in self.train_sets],
            [d.config.weight for d in self.train_sets],
            num_samples=self.cfg.samples_per_epoch,
            seed=self.cfg.seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
            infinite=True,
        )
        sampler.resume(samples_seen)
        return DataLoader(
            MixtureDataset(self.train_sets),
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=collate_clips,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            generator=torch.Generator(),  # keeps the global RNG untouched (exact resume)
        )

    def val_loader(self) -> DataLoader | None:
        if not self.val_sets:
            return None
        acc = self.accelerator
        total = sum(len(d) for _, d in self.val_sets)
        wanted = min(total, self.cfg.val_batches * self.cfg.batch_size * acc.num_processes)
        sampler = MixtureSampler(
            [len(d) for _, d in self.val_sets],
            [d.config.weight for _, d in self.val_sets],
            num_samples=wanted,
            seed=self.cfg.val_seed,
            rank=acc.process_index,
            world_size=acc.num_processes,
        )
        return DataLoader(
            MixtureDataset([d for _, d in self.val_sets]),
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            # decode in workers as in training (LeRobot: no decoding in the main process while workers exist)
            num_workers=self.cfg.num_workers,
            collate_fn=collate_clips,
            generator=torch.Generator(),
        )

    # -- validation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Validation loss (fixed draws, no text dropout) over all processes, then sample videos (main)."""
        loader = self.val_loader()
        if loader is None:
            return {}
        self.unet.eval()
        names = [d.config.repo_id for _, d in self.val_sets]
        result = validation_losses(self.objective, loader, names, self.cfg.val_seed)
        if self.cfg.sample_videos.num_videos > 0 and self.accelerator.is_main_process:
            write_sample_videos(
                self.objective,
                [d for _, d in self.val_sets],
                self.parts.scheduler,
                self.cfg,
                self.output_dir / "samples" / f"step_{step:09d}",
            )
        self.accelerator.wait_for_everyone()
        self.unet.train()
        return result

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> Path | None:
        """Train (or resume) to ``cfg.steps``, export the folder (and push it); None with ``latent_cache.only``."""
        cfg, acc = self.cfg, self.accelerator
        if self.cache_only:
            logger.info("latent cache complete; --latent_cache.only set: not training")
            return None
        step = self._start()
        per_step = cfg.batch_size * cfg.gradient_accumulation_steps
        loader = self.train_loader(samples_seen=step * per_step)
        if acc.is_main_process:
            logger.info(
                "GFDM: %d train clips in %d dataset(s), %d process(es) x batch %d, %d steps from step %d",
                sum(len(d) for d in self.train_sets),
                len(self.train_sets),
                acc.num_processes,
                cfg.batch_size,
                cfg.steps,
                step,
            )
        progress = tqdm(total=cfg.steps, initial=step, desc="gfdm", disable=not acc.is_local_main_process)
        window = _LossWindow()
        batches = iter(loader)
        while step < cfg.steps:
            loss, grad_norm = self._optimisation_step(next(batches), step)
            window.add(loss)
            if not acc.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = self._log_window(step, window, grad_norm)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                window = _LossWindow()
            if step % cfg.val_every == 0 or step == cfg.val_first_step:
                self.last_val = self.validate(step)
                if self.last_val:
                    self.metrics.log(step, **self.last_val)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(
                    acc,
                    self.output_dir,
                    step,
                    {"last_val": self.last_val},
                    keep_last=cfg.keep_last_checkpoints,
                )
            if cfg.export_every and step % cfg.export_every == 0 and step != cfg.steps:
                self.export(self.output_dir / f"gfdm_step_{step:09d}", step)
        progress.close()
        folder = self.export(self.output_dir / EXPORT_DIR, step)
        if cfg.push_to_hub and acc.is_main_process:
            url = push_folder_to_hub(
                folder, cfg.hub_repo_id, private=cfg.hub_private, commit_message=f"GFDM after {step} steps"
            )
            logger.info("pushed %s to %s", folder, url)
        acc.wait_for_everyone()
        acc.end_training()
        return folder

    def _start(self) -> int:
        """The step to start from: restored from the last checkpoint with ``--resume``, else 0 (fresh metrics,
        every process seeded)."""
        checkpoint = checkpoint_to_resume(self.output_dir, self.cfg.resume)
        if checkpoint is not None:
            state = restore_checkpoint(self.accelerator, checkpoint)
            self.last_val = state.get("last_val", {})
            self.metrics.truncate_after(state["step"])
            logger.info("resumed from %s at step %d", checkpoint, state["step"])
            return state["step"]
        if self.accelerator.is_main_process:
            self.metrics.path.unlink(
                missing_ok=True
            )  # left by a run that stopped before its first checkpoint
        seed_process(self.cfg.seed, self.accelerator)
        return 0

    def _optimisation_step(self, batch: dict, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One (micro-)batch: loss, backward, clip when gradients sync, AdamW, lr schedule. Returns the loss and
        the gradient norm (None when not clipped)."""
        cfg, acc = self.cfg, self.accelerator
        with acc.accumulate(self.unet):
            loss = self.objective.losses(batch, text_dropout=cfg.objective.text_dropout).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite GFDM loss {loss.item()} at step {step + 1}")
            acc.backward(loss)
            grad_norm = None
            if acc.sync_gradients and cfg.grad_clip_norm > 0:
                grad_norm = acc.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def _log_window(self, step: int, window: _LossWindow, grad_norm: torch.Tensor | None) -> dict[str, float]:
        """Log the mean loss over the window and over processes (the global batch's, whatever the process count),
        the learning rate, the speed and the last gradient norm."""
        acc = self.accelerator
        elapsed = time.perf_counter() - window.start
        window_mean = torch.tensor(window.loss / window.count, device=acc.device)
        record = {
            "loss": acc.reduce(window_mean, reduction="mean").item(),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "samples_per_s": window.count * self.cfg.batch_size * acc.num_processes / max(elapsed, 1e-9),
        }
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        self.metrics.log(step, **record)
        return record

    def export(self, folder: Path, step: int) -> Path:
        """Write the GFDM folder (main process) and wait for it on every process."""
        acc = self.accelerator
        if acc.is_main_process:
            unet = acc.unwrap_model(self.unet)
            metrics = {k: v for k, v in self.last_val.items() if isinstance(v, float)}
            export_gfdm_folder(folder, self.parts, unet, self.cfg, step, metrics)
            logger.info("wrote %s", folder)
        acc.wait_for_everyone()
        return folder


@dataclass
class _LossWindow:
    """Loss sum and (micro-)batch count since the last log line."""

    loss: float = 0.0
    count: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach().item()
        self.count += 1
