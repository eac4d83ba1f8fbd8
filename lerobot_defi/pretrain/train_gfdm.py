"""``lerobot-defi-train-gfdm``: fine-tune Stable Video Diffusion into DeFI's language-conditioned video
forward-dynamics model (GFDM, spec section 2) on a mixture of LeRobotDatasets, and publish it.

    lerobot-defi-train-gfdm --config_path=gfdm_official.yaml \\
        --datasets='[{repo_id: me/calvin_abc, cameras: [static, gripper], camera_weights: [0.75, 0.25]}]' \\
        --output_dir=outputs/gfdm --push-to-hub --hub_repo_id=me/defi-gfdm
    accelerate launch --multi_gpu --num_processes=8 $(which lerobot-defi-train-gfdm) --config_path=...

Per step: clips ``(B, F, 3, S, S)`` (or cached latents) -> VAE latents ``x0 (B, F, 4, S/8, S/8)`` (posterior
sample x 0.18215) -> first-frame condition ``x0[:, 0] / 0.18215`` -> CLIP text context ``(B, 20, 1024)`` (hidden
states computed with the tokenizer's attention mask, as the original; zeroed for 5 % of the samples) -> EDM
v-objective on the whole UNet (``gfdm_v_objective_loss``).

Outputs under ``output_dir``: ``checkpoints/<step>/`` (accelerate state, resumable with ``--resume``),
``metrics.jsonl`` (loss, lr, validation loss), ``samples/step_<step>.{mp4,gif}`` (ground truth above
prediction), and the final diffusers folder ``gfdm/`` (unet, vae, scheduler, text_encoder, tokenizer,
model_index.json, README.md model card) that the DeFI policy loads with ``--policy.gfdm_path``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from lerobot_defi.models.edm import sample_log_normal_sigmas
from lerobot_defi.models.gfdm import (
    SVD_SCHEDULER_CONFIG,
    GFDMVideoPipeline,
    check_svd_init_folder,
    decode_latent_video,
    diffusers_config,
    encode_video_latents,
    gfdm_v_objective_loss,
    sample_gfdm_video,
    text_context_from_clip,
)
from lerobot_defi.models.text import InstructionEncoders, load_clip_text
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
from lerobot_defi.pretrain.gfdm_data import (
    GFDMDatasetConfig,
    build_clip_datasets,
    encode_missing_latents,
    frames_to_model_range,
)
from lerobot_defi.pretrain.gfdm_samples import VIDEO_FORMATS, write_comparison_videos

# Logs from the main process only unless a call says main_process_only=False.
logger = get_logger(__name__)

FROZEN_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
EXPORT_DIR = "gfdm"
CONFIG_FILE = "train_config.yaml"
TRAINING_INFO_FILE = "gfdm_training.json"


@dataclass
class GFDMModelConfig:
    # SVD image-to-video to start from: Hub id or local diffusers folder (unet/, vae/, optional scheduler/).
    # None: random weights from unet_config / vae_config (tiny test models).
    pretrained_path: str | None = "stabilityai/stable-video-diffusion-img2vid"
    unet_config: dict | None = None
    vae_config: dict | None = None
    # CLIP text tower for the instruction context (spec 2.2); None: random from clip_text_config with an
    # offline byte-level tokenizer.
    clip_text_path: str | None = "openai/clip-vit-base-patch32"
    clip_text_config: dict | None = None
    clip_context_length: int = 20
    # dtype of the frozen VAE and text encoder on the device (official fp16); the UNet trains in fp32 master
    # weights under accelerate's mixed precision.
    frozen_dtype: str = "float16"
    gradient_checkpointing: bool = True

    def __post_init__(self):
        if self.frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(
                f"model.frozen_dtype must be one of {list(FROZEN_DTYPES)}, got {self.frozen_dtype!r}"
            )
        if self.pretrained_path is None and (self.unet_config is None or self.vae_config is None):
            raise ValueError(
                "give model.pretrained_path (SVD img2vid) or both model.unet_config and model.vae_config"
            )


@dataclass
class GFDMObjectiveConfig:
    # ln(sigma) ~ N(mean, std^2) (spec 2.5).
    sigma_log_mean: float = 0.7
    sigma_log_std: float = 1.6
    # Probability of replacing a sample's text context by zeros (classifier-free guidance dropout).
    text_dropout: float = 0.05
    # SVD micro-conditioning (fps id, motion bucket, noise augmentation) during training (official [7, 127, 0];
    # the policy reads features with its own ids, spec 8 item 7).
    added_time_ids: tuple[float, float, float] = (7.0, 127.0, 0.0)


@dataclass
class GFDMSampleVideosConfig:
    # Predicted videos written at every validation; 0 disables them.
    num_videos: int = 8
    num_steps: int = 30
    guidance_min: float = 1.0
    guidance_max: float = 7.5
    # Unconditional branch uses a zero image latent too (official sampling quirk, spec 8 item 22).
    uncond_zero_image: bool = True
    decode_chunk_size: int = 7
    fps: int = 4
    formats: list[str] = field(default_factory=lambda: ["mp4", "gif"])
    seed: int = 0


@dataclass
class LatentCacheConfig:
    # Encode every clip's episode once with the VAE and train from the cached latents.
    enabled: bool = False
    # Cache folder (<dir>/<dataset>/<camera>/episode_<i>.pt); None: <output_dir>/latent_cache.
    dir: str | None = None
    # Posterior sample (official VPP latents) or posterior mean.
    sample_posterior: bool = True
    frames_per_batch: int = 32
    # Encode the cache and stop.
    only: bool = False


@dataclass
class TrainGFDMConfig:
    datasets: list[GFDMDatasetConfig] = field(default_factory=list)
    output_dir: str = "outputs/train_gfdm"
    model: GFDMModelConfig = field(default_factory=GFDMModelConfig)
    objective: GFDMObjectiveConfig = field(default_factory=GFDMObjectiveConfig)
    sample_videos: GFDMSampleVideosConfig = field(default_factory=GFDMSampleVideosConfig)
    latent_cache: LatentCacheConfig = field(default_factory=LatentCacheConfig)
    num_frames: int = 16
    image_size: int = 256
    # Per process (official 6 x 8 GPUs).
    batch_size: int = 6
    gradient_accumulation_steps: int = 1
    # Optimisation steps (official run: the checkpoint at 100k of 500k is used downstream).
    steps: int = 100_000
    lr: float = 5e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    # 0 disables clipping.
    grad_clip_norm: float = 1.0
    # A diffusers scheduler name ("constant", "constant_with_warmup", "cosine", "linear", ...).
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    # "no" | "fp16" (official) | "bf16".
    mixed_precision: str = "fp16"
    allow_tf32: bool = True
    seed: int = 6
    num_workers: int = 4
    # Mixture epoch length (None: the largest dataset's clip count, as officially).
    samples_per_epoch: int | None = None
    log_every: int = 50
    save_every: int = 50_000
    keep_last_checkpoints: int | None = 2
    # Validation loss + sample videos every val_every steps and once at val_first_step (official 50k and 5).
    val_every: int = 50_000
    val_first_step: int | None = 5
    val_batches: int = 32
    val_seed: int = 1234
    # Also write the diffusers folder as <output_dir>/gfdm_step_<n> every this many steps (None: only at the end).
    export_every: int | None = None
    # Continue from <output_dir>/checkpoints/last (the data order and RNG streams continue exactly).
    resume: bool = False
    push_to_hub: bool = False
    hub_repo_id: str | None = None
    hub_private: bool | None = None
    # accelerate tracker ("tensorboard", "wandb", ...) besides metrics.jsonl.
    report_to: str | None = None

    def __post_init__(self):
        if not self.datasets:
            raise ValueError(
                "give at least one dataset: --datasets='[{repo_id: ..., root: ...}]' or a config file"
            )
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("--push-to-hub needs --hub_repo_id=<user>/<name>")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (VAE), got {self.image_size}")
        unknown = [f for f in self.sample_videos.formats if f not in VIDEO_FORMATS]
        if unknown:
            raise ValueError(f"sample_videos.formats {unknown} unknown; choose from {VIDEO_FORMATS}")


# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GFDMParts:
    """Everything Stage 1 needs. ``vae``/``text_encoder`` are the float32 originals (exported as they are);
    the device copies live in the trainer."""

    unet: Any
    vae: Any
    scheduler: Any
    text_encoder: Any
    tokenizer: Any
    clip_text_config: dict


def load_gfdm_parts(cfg: GFDMModelConfig) -> GFDMParts:
    """UNet + VAE (+ scheduler) from an SVD folder / Hub id or from configs; CLIP text tower + tokenizer."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        UNetSpatioTemporalConditionModel,
    )

    if cfg.pretrained_path is not None:
        check_svd_init_folder(cfg.pretrained_path)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(cfg.pretrained_path, subfolder="unet")
        vae = AutoencoderKLTemporalDecoder.from_pretrained(cfg.pretrained_path, subfolder="vae")
        try:
            scheduler = EulerDiscreteScheduler.from_pretrained(cfg.pretrained_path, subfolder="scheduler")
        except (OSError, ValueError):
            logging.getLogger(__name__).warning(
                "%s has no scheduler/; using SVD's scheduler config", cfg.pretrained_path
            )
            scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    else:
        unet = UNetSpatioTemporalConditionModel.from_config(cfg.unet_config)
        vae = AutoencoderKLTemporalDecoder.from_config(cfg.vae_config)
        scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER_CONFIG)
    text_encoder, tokenizer, clip_config = load_clip_text(cfg.clip_text_path, cfg.clip_text_config)
    # Fail now rather than in the first step if the text width does not tile the cross-attention width.
    text_context_from_clip(
        torch.zeros(1, 1, text_encoder.config.hidden_size), unet.config.cross_attention_dim
    )
    return GFDMParts(
        unet, vae.eval().requires_grad_(False), scheduler, text_encoder.eval(), tokenizer, clip_config
    )


def export_gfdm_folder(
    folder: str | Path,
    parts: GFDMParts,
    unet,
    cfg: TrainGFDMConfig,
    step: int,
    metrics: dict[str, float],
) -> Path:
    """Write the diffusers folder atomically (``GFDMVideoPipeline.save_pretrained``: unet/, vae/, scheduler/,
    text_encoder/, tokenizer/, model_index.json) plus gfdm_training.json and the model card. Main process only."""
    with atomic_directory(folder) as tmp:
        pipeline = GFDMVideoPipeline(unet, parts.vae, parts.scheduler, parts.text_encoder, parts.tokenizer)
        pipeline.save_pretrained(tmp)
        info = {
            "step": step,
            "num_frames": cfg.num_frames,
            "image_size": cfg.image_size,
            "clip_context_length": cfg.model.clip_context_length,
            "added_time_ids": list(cfg.objective.added_time_ids),
            "metrics": metrics,
        }
        (tmp / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        write_model_card(
            tmp,
            title="DeFI GFDM — language-conditioned video forward-dynamics model",
            summary=(
                "Stable Video Diffusion (image-to-video) fine-tuned into a language-conditioned video predictor "
                "with `lerobot-defi-train-gfdm` (lerobot-policy-defi, DeFI Stage 1): the CLIP text context "
                f"replaces SVD's image embedding; {cfg.num_frames}-frame clips at {cfg.image_size}x{cfg.image_size}."
            ),
            datasets=cfg.datasets,
            steps=step,
            config=_config_dict(cfg),
            base_model=cfg.model.pretrained_path,
            metrics=metrics,
            usage=(
                "```bash\nlerobot-train --policy.type=defi --policy.gfdm_path=<this repo or folder> ...\n```\n\n"
                "Predict a video from an image and an instruction:\n\n```python\n"
                "from lerobot_defi.models.gfdm import GFDMVideoPipeline\n"
                "pipe = GFDMVideoPipeline.from_pretrained(path)\n"
                "frames = pipe(images, ['open the drawer'])  # images (B, 3, H, W) in [-1, 1]\n```\n\n"
                "Each component also loads alone with diffusers / transformers, e.g. "
                "`UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder='unet')`."
            ),
            library_name="diffusers",
            tags=["video-prediction", "stable-video-diffusion", "forward-dynamics"],
        )
    return Path(folder)


def _config_dict(cfg: TrainGFDMConfig) -> dict:
    return json.loads(json.dumps(draccus.encode(cfg)))


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------
def _collate(items: list[dict]) -> dict:
    batch = default_collate(
        [{k: v for k, v in item.items() if k not in ("task", "camera")} for item in items]
    )
    batch["task"] = [item["task"] for item in items]
    batch["camera"] = [item["camera"] for item in items]
    return batch


class GFDMTrainer:
    """Holds the prepared models and computes losses / samples; ``run()`` is the training loop."""

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
        self.cross_attention_dim = unet.config.cross_attention_dim
        self.scaling_factor = self.vae.config.scaling_factor

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
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl", acc)
        self.last_val: dict[str, float] = {}
        self.cache_only = cfg.latent_cache.enabled and cfg.latent_cache.only
        if self.cache_only:
            return

        optimizer = torch.optim.AdamW(
            unet.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=cfg.steps * acc.num_processes,
        )
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(unet, optimizer, lr_scheduler)

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
            collate_fn=_collate,
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
            collate_fn=_collate,
            generator=torch.Generator(),
        )

    def clean_latents(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``(B, F, 4, h, w)`` float32 of a batch (read from the cache or VAE-encoded)."""
        device = self.accelerator.device
        if "latents" in batch:
            return batch["latents"].to(device, torch.float32)
        frames = batch["frames"].to(device)
        b, f = frames.shape[:2]
        latents = encode_video_latents(
            self.vae,
            frames_to_model_range(frames.flatten(0, 1)),
            sample_posterior=True,
            chunk_size=self.cfg.latent_cache.frames_per_batch,
            generator=generator,
        )
        return latents.reshape(b, f, *latents.shape[1:])

    def text_context(self, tasks: list[str]) -> torch.Tensor:
        """``(B, L, cross_attention_dim)`` CLIP context of the instructions."""
        hidden = self.text(tasks).clip_hidden.to(self.accelerator.device)
        return text_context_from_clip(hidden, self.cross_attention_dim)

    def losses(
        self, batch: dict, *, text_dropout: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-video losses ``(B,)`` of a batch (random draws from ``generator``, else the global RNG)."""
        device = self.accelerator.device
        clean = self.clean_latents(batch, generator)
        b = clean.shape[0]
        context = self.text_context(batch["task"])
        if text_dropout > 0:
            keep = torch.rand(b, device=device, generator=generator) >= text_dropout
            context = context * keep[:, None, None].to(context.dtype)
        sigmas = sample_log_normal_sigmas(
            b,
            self.cfg.objective.sigma_log_mean,
            self.cfg.objective.sigma_log_std,
            device=device,
            generator=generator,
        )
        noise = torch.randn(clean.shape, device=device, generator=generator)
        ids = torch.tensor([self.cfg.objective.added_time_ids], device=device).expand(b, -1)
        with self.accelerator.autocast():
            return gfdm_v_objective_loss(
                self.unet, clean, clean[:, 0] / self.scaling_factor, context, ids, sigmas, noise
            )

    # -- validation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Validation loss (fixed draws, no text dropout) over all processes, then sample videos (main)."""
        loader = self.val_loader()
        if loader is None:
            return {}
        acc = self.accelerator
        names = [d.config.repo_id for _, d in self.val_sets]
        sums = torch.zeros(len(names) + 1, device=acc.device, dtype=torch.float64)
        counts = torch.zeros_like(sums)
        self.unet.eval()
        for i, batch in enumerate(loader):
            generator = torch.Generator(acc.device).manual_seed(
                self.cfg.val_seed * 7919 + i * 104729 + acc.process_index
            )
            per_video = self.losses(batch, text_dropout=0.0, generator=generator).double()
            sources = batch["source_index"].to(acc.device)
            sums.index_add_(0, sources, per_video)
            counts.index_add_(0, sources, torch.ones_like(per_video))
            sums[-1] += per_video.sum()
            counts[-1] += len(per_video)
        sums, counts = acc.reduce(sums, "sum"), acc.reduce(counts, "sum")
        result = {"val_loss": (sums[-1] / counts[-1].clamp(min=1)).item()}
        for k, name in enumerate(names):
            if counts[k] > 0:
                result[f"val_loss/{name}"] = (sums[k] / counts[k]).item()
        if self.cfg.sample_videos.num_videos > 0 and acc.is_main_process:
            self.write_samples(step)
        acc.wait_for_everyone()
        self.unet.train()
        return result

    @torch.no_grad()
    def write_samples(self, step: int) -> list[Path]:
        """Predict ``num_videos`` validation clips from their first frame and instruction; write
        ``samples/step_<step>.{mp4,gif}`` (ground truth above prediction)."""
        sv = self.cfg.sample_videos
        dataset = MixtureDataset([d for _, d in self.val_sets])
        order = np.random.default_rng(sv.seed).permutation(len(dataset))[: sv.num_videos]
        keys = [(int(i), sv.seed + int(i)) for i in order]
        loader = DataLoader(
            dataset, len(keys), sampler=keys, num_workers=self.cfg.num_workers, collate_fn=_collate
        )
        batch = next(iter(loader))
        generator = torch.Generator(self.accelerator.device).manual_seed(sv.seed)
        clean = self.clean_latents(batch, generator)
        unet = self.accelerator.unwrap_model(self.unet)
        scheduler = copy.deepcopy(self.parts.scheduler)
        with self.accelerator.autocast():
            predicted = sample_gfdm_video(
                unet,
                scheduler,
                clean[:, 0] / self.scaling_factor,
                self.text_context(batch["task"]),
                num_frames=self.cfg.num_frames,
                num_steps=sv.num_steps,
                guidance_min=sv.guidance_min,
                guidance_max=sv.guidance_max,
                added_time_ids=self.cfg.objective.added_time_ids,
                uncond_zero_image=sv.uncond_zero_image,
                generator=generator,
            )
        truth = decode_latent_video(self.vae, clean, sv.decode_chunk_size)
        prediction = decode_latent_video(self.vae, predicted, sv.decode_chunk_size)
        stem = self.output_dir / "samples" / f"step_{step:09d}"
        paths = write_comparison_videos(stem, truth, prediction, sv.fps, sv.formats)
        stem.with_suffix(".txt").write_text("\n".join(batch["task"]) + "\n")
        return paths

    # -- loop --------------------------------------------------------------------------------------------------
    def run(self) -> Path | None:
        cfg, acc = self.cfg, self.accelerator
        if self.cache_only:
            logger.info("latent cache complete; --latent_cache.only set: not training")
            return None
        step = 0
        if cfg.resume:
            checkpoint = latest_checkpoint(self.output_dir)
            if checkpoint is None:
                raise FileNotFoundError(f"--resume: no checkpoint under {self.output_dir}/checkpoints")
            state = load_checkpoint(acc, checkpoint)
            step = state["step"]
            self.last_val = state.get("last_val", {})
            self.metrics.truncate_after(step)
            logger.info("resumed from %s at step %d", checkpoint, step)
        else:
            if latest_checkpoint(self.output_dir) is not None:
                raise FileExistsError(
                    f"{self.output_dir} already holds training checkpoints: pass --resume=true to continue that run "
                    "or choose another --output_dir"
                )
            if acc.is_main_process:
                self.metrics.path.unlink(
                    missing_ok=True
                )  # left by a run that stopped before its first checkpoint
            seed_process(cfg.seed, acc)
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
        window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
        batches = iter(loader)
        while step < cfg.steps:
            with acc.accumulate(self.unet):
                loss = self.losses(next(batches), text_dropout=cfg.objective.text_dropout).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite GFDM loss {loss.item()} at step {step + 1}")
                acc.backward(loss)
                grad_norm = None
                if acc.sync_gradients and cfg.grad_clip_norm > 0:
                    grad_norm = acc.clip_grad_norm_(self.unet.parameters(), cfg.grad_clip_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach().item()
            window_count += 1
            if not acc.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                # mean over processes: the logged loss is the global batch's, whatever the process count
                window_mean = torch.tensor(window_loss / window_count, device=acc.device)
                record = {
                    "loss": acc.reduce(window_mean, reduction="mean").item(),
                    "lr": self.lr_scheduler.get_last_lr()[0],
                    "samples_per_s": window_count * cfg.batch_size * acc.num_processes / max(elapsed, 1e-9),
                }
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                self.metrics.log(step, **record)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
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

    def export(self, folder: Path, step: int) -> Path:
        acc = self.accelerator
        if acc.is_main_process:
            unet = acc.unwrap_model(self.unet)
            metrics = {k: v for k, v in self.last_val.items() if isinstance(v, float)}
            export_gfdm_folder(folder, self.parts, unet, self.cfg, step, metrics)
            logger.info("wrote %s", folder)
        acc.wait_for_everyone()
        return folder


def train(cfg: TrainGFDMConfig) -> Path | None:
    """Run Stage 1 with ``cfg``; returns the exported diffusers folder (None with ``latent_cache.only``)."""
    output_dir = Path(cfg.output_dir)
    trainer = GFDMTrainer(cfg)
    if trainer.accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / CONFIG_FILE).open("w") as f:
            draccus.dump(cfg, f)
    return trainer.run()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(TrainGFDMConfig, argv)
    train(cfg)


if __name__ == "__main__":
    main()
