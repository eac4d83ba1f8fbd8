"""Configuration of ``lerobot-defi-train-gidm`` (draccus dataclasses; presets in ``configs/gidm_*.yaml``) and the
names of the files a run writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot_defi.models.gidm import GIDMConfig
from lerobot_defi.pretrain.gidm.features import DINOV2_OFFICIAL_ID, T5_OFFICIAL_ID
from lerobot_defi.pretrain.gidm.frame_pairs import (
    END_OF_EPISODE_MODES,
    GAP_SAMPLING_MODES,
    MISSING_TASK_MODES,
    FramePairSourceConfig,
)
from lerobot_defi.pretrain.shared.cli import PresetConfig

# <output_dir>/model/: the exported GIDM (config.json + model.safetensors, card, training record, visual check).
MODEL_DIR = "model"
# The training record inside the model folder: frozen encoders, image size, data; read by gidm.inspection.
GIDM_TRAINING_INFO_FILE = "gidm_training.json"


@dataclass
class AugmentationConfig:
    """Train-time augmentation, identical for both frames of a pair (official values, docs/method.md §3.3)."""

    enable: bool = True
    crop_area: float = 0.9
    brightness: float = 0.2
    contrast: list[float] = field(default_factory=lambda: [0.8, 1.2])
    saturation: list[float] = field(default_factory=lambda: [0.8, 1.2])
    hue: float = 0.05


@dataclass
class GIDMTrainConfig(PresetConfig):
    """Everything of a GIDM pretraining run (defaults = official recipe where docs/method.md §3 gives one)."""

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
    # Data (see frame_pairs): official behaviour by default.
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
