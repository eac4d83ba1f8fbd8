"""``lerobot-defi-train-gfdm``: fine-tune Stable Video Diffusion into DeFI's language-conditioned video
forward-dynamics model (GFDM, docs/method.md §2) on a mixture of LeRobotDatasets, and publish it.

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

Modules: the package ``gfdm/`` (its docstring lists them); ``shared/`` holds what Stage 2 uses too. The loss,
sampler and pipeline are ``models/gfdm_video.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import draccus

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.pretrain.gfdm.config import TrainGFDMConfig
from lerobot_defi.pretrain.gfdm.trainer import GFDMTrainer
from lerobot_defi.pretrain.shared.cli import parse_config

# The run's full config, written next to its outputs.
CONFIG_FILE = "train_config.yaml"


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
    train(parse_or_exit(TrainGFDMConfig, argv, "lerobot-defi-train-gfdm", parse=parse_config))


if __name__ == "__main__":
    main()
