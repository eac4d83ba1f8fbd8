"""What GFDM pretraining starts from (docs/method.md §2.1, §2.2): the SVD image-to-video UNet, VAE and scheduler
(a Hub id or local diffusers folder, or random weights from configs for tests) and the CLIP text tower with its
tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lerobot_defi.models.gfdm import GFDM_SUBFOLDERS, text_context_from_clip
from lerobot_defi.models.gfdm_video import SVD_SCHEDULER_CONFIG
from lerobot_defi.models.text import load_clip_text
from lerobot_defi.pretrain.gfdm.config import GFDMModelConfig

logger = logging.getLogger(__name__)


def check_svd_init_folder(path: str | Path) -> None:
    """Fail early when a local folder to initialise the GFDM from lacks the UNet or VAE (config + weights).

    A Hub id (no such local path) is left to diffusers. Weights may be fp32 or the ``fp16`` variant.
    """
    path = Path(path)
    if not path.exists():
        return
    missing = []
    for sub in GFDM_SUBFOLDERS:
        folder = path / sub
        if not (folder / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        has_weights = any(
            any(folder.glob(pattern))
            for pattern in ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")
        )
        if not has_weights:
            missing.append(f"{sub}/diffusion_pytorch_model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{path} cannot initialise a GFDM: missing {missing}. Expected a Stable Video Diffusion image-to-video "
            "folder in the diffusers layout (e.g. a download of stabilityai/stable-video-diffusion-img2vid, or a "
            "folder written by lerobot-defi-train-gfdm): unet/ and vae/, each with config.json and "
            "diffusion_pytorch_model(.fp16).safetensors"
        )


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
            logger.warning("%s has no scheduler/; using SVD's scheduler config", cfg.pretrained_path)
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
