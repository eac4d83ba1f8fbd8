"""Configuration of ``lerobot-defi-train-gfdm`` (draccus dataclasses; presets in ``configs/gfdm_*.yaml``): the
models to start from, the objective, sample videos, the latent cache and the run (data, optimisation, schedule
of logs / validation / checkpoints / exports, Hub)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lerobot_defi.pretrain.gfdm.clips import GFDMDatasetConfig
from lerobot_defi.pretrain.gfdm.sample_videos import VIDEO_FORMATS
from lerobot_defi.pretrain.shared.cli import PresetConfig

FROZEN_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class GFDMModelConfig:
    # SVD image-to-video to start from: Hub id or local diffusers folder (unet/, vae/, optional scheduler/).
    # None: random weights from unet_config / vae_config (tiny test models).
    pretrained_path: str | None = "stabilityai/stable-video-diffusion-img2vid"
    unet_config: dict | None = None
    vae_config: dict | None = None
    # CLIP text tower for the instruction context (docs/method.md §2.2); None: random from clip_text_config with an
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
    # ln(sigma) ~ N(mean, std^2) (docs/method.md §2.5).
    sigma_log_mean: float = 0.7
    sigma_log_std: float = 1.6
    # Probability of replacing a sample's text context by zeros (classifier-free guidance dropout).
    text_dropout: float = 0.05
    # SVD micro-conditioning (fps id, motion bucket, noise augmentation) during training (official [7, 127, 0];
    # the policy reads features with its own ids, docs/method.md §8.7).
    added_time_ids: tuple[float, float, float] = (7.0, 127.0, 0.0)


@dataclass
class GFDMSampleVideosConfig:
    # Predicted videos written at every validation; 0 disables them.
    num_videos: int = 8
    num_steps: int = 30
    guidance_min: float = 1.0
    guidance_max: float = 7.5
    # Unconditional branch uses a zero image latent too (official sampling quirk, docs/method.md §8.22).
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
class TrainGFDMConfig(PresetConfig):
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
