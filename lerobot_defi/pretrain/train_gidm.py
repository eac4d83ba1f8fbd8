"""``lerobot-defi-train-gidm``: pretrain the latent inverse-dynamics model (GIDM, docs/method.md §3).

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

Modules: the package ``gidm/`` (its docstring lists them); ``shared/`` holds what Stage 1 uses too.
"""

from __future__ import annotations

from pathlib import Path

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.pretrain.gidm.config import GIDMTrainConfig
from lerobot_defi.pretrain.gidm.trainer import GIDMTrainer
from lerobot_defi.pretrain.shared.cli import parse_config


def train(cfg: GIDMTrainConfig) -> Path:
    """Run (or resume) the training described by ``cfg``; returns the exported model folder."""
    return GIDMTrainer(cfg).run()


def main(argv: list[str] | None = None) -> None:
    train(parse_or_exit(GIDMTrainConfig, argv, "lerobot-defi-train-gidm", parse=parse_config))


if __name__ == "__main__":
    main()
