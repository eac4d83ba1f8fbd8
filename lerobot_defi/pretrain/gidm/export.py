"""The GIDM model folder a run ends with (``<output_dir>/model/``), written atomically by the main process:
``config.json`` + ``model.safetensors`` of the whole :class:`LatentActionModel`, ``gidm_training.json`` (frozen
encoders, image size, data and gaps, final metrics), the visual check ``latent_actions.png/json`` and the
``README.md`` model card. The DeFI policy takes its encoder side with ``--policy.gidm_path``."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

from lerobot_defi.models.gidm import LatentActionModel
from lerobot_defi.pretrain.gidm.config import GIDM_TRAINING_INFO_FILE, GIDMTrainConfig
from lerobot_defi.pretrain.gidm.features import DinoPatchFeatures, T5InstructionFeatures
from lerobot_defi.pretrain.gidm.frame_pairs import FramePairDataset, PairAugmentation, describe_sources
from lerobot_defi.pretrain.gidm.inspection import write_inspection
from lerobot_defi.pretrain.shared.publishing import atomic_directory, write_model_card

logger = logging.getLogger(__name__)

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
        (tmp / GIDM_TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2))
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
