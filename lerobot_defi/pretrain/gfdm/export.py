"""The GFDM folder a run ends with (``<output_dir>/gfdm/``, or ``gfdm_step_<n>/`` along the way), written
atomically by the main process: the diffusers layout of :class:`GFDMVideoPipeline` (``unet/ vae/ scheduler/
text_encoder/ tokenizer/ model_index.json``), ``gfdm_training.json`` (step, frames, image size, ids, metrics) and
the ``README.md`` model card. The DeFI policy loads it with ``--policy.gfdm_path``."""

from __future__ import annotations

import json
from pathlib import Path

import draccus

from lerobot_defi.models.gfdm_video import GFDMVideoPipeline
from lerobot_defi.pretrain.gfdm.config import TrainGFDMConfig
from lerobot_defi.pretrain.gfdm.parts import GFDMParts
from lerobot_defi.pretrain.shared.publishing import atomic_directory, write_model_card

EXPORT_DIR = "gfdm"
# The training record inside the exported folder.
GFDM_TRAINING_INFO_FILE = "gfdm_training.json"


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
        (tmp / GFDM_TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
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
            config=config_dict(cfg),
            base_model=cfg.model.pretrained_path,
            metrics=metrics,
            usage=(
                "```bash\nlerobot-train --policy.type=defi --policy.gfdm_path=<this repo or folder> ...\n```\n\n"
                "Predict a video from an image and an instruction:\n\n```python\n"
                "from lerobot_defi.models.gfdm_video import GFDMVideoPipeline\n"
                "pipe = GFDMVideoPipeline.from_pretrained(path)\n"
                "frames = pipe(images, ['open the drawer'])  # images (B, 3, H, W) in [-1, 1]\n```\n\n"
                "Each component also loads alone with diffusers / transformers, e.g. "
                "`UNetSpatioTemporalConditionModel.from_pretrained(path, subfolder='unet')`."
            ),
            library_name="diffusers",
            tags=["video-prediction", "stable-video-diffusion", "forward-dynamics"],
        )
    return Path(folder)


def config_dict(cfg: TrainGFDMConfig) -> dict:
    """The run's config as plain JSON-able data (for the model card)."""
    return json.loads(json.dumps(draccus.encode(cfg)))
