"""``DeFIConfig``: the ``defi`` policy type. Defaults compute the official function with the official CALVIN
numbers (docs/method.md §9, §A); the settings that only matter when training from scratch (initialisations, noise
draws per chunk, warm-up, codebook restarts) default to what learns (docs/training.md §4), and
``configs/defi_calvin.yaml`` sets the original's values for them.

Cameras and the action dimension come from the dataset's features (``input_features`` /
``output_features`` filled by ``lerobot-train``); any dataset with at least one camera and a task string
works. Every official quirk that changes numbers is a named flag with the official value as default
(docs/method.md §8, whose table lists every flag).

Pretrained parts have two ways in: a Hub id or folder (``gfdm_path``, ``clip_text_path``, ``t5_path``,
``gidm_path``), or an architecture dict for random weights (``gfdm_unet_config``, ...; the ``tiny`` preset in
``configs/``). When a part is loaded from a path, the policy records its architecture dict in the config it
saves (``policy/pretrained_parts.py``), so a saved policy rebuilds offline from its own ``config.json`` +
``model.safetensors``.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig
from lerobot.optim.schedulers import DiffuserSchedulerConfig, LRSchedulerConfig
from lerobot.utils.constants import ACTION

from lerobot_defi.models.action_head import ActionHeadConfig
from lerobot_defi.models.gidm import GIDMConfig
from lerobot_defi.models.video_former import VideoFormerConfig
from lerobot_defi.policy.tristage_schedule import TriStageSchedulerConfig

FROZEN_DTYPES = ("float32", "float16", "bfloat16")
# Spread (std) of SVD's VAE latents, unscaled: 1 / scaling_factor.
SVD_LATENT_STD = 1.0 / 0.18215

logger = logging.getLogger(__name__)


@PreTrainedConfig.register_subclass("defi")
@dataclass
class DeFIConfig(PreTrainedConfig):
    # --- observations and actions -------------------------------------------------------------------------
    n_obs_steps: int = 1
    chunk_size: int = 10
    n_action_steps: int = 10
    # Every camera is resized to image_size x image_size and mapped to [-1, 1].
    image_size: int = 256
    # Cameras the policy reads (keys like "observation.images.static"); None: every camera of the dataset.
    camera_keys: list[str] | None = None
    # Cameras whose predicted frames feed the Video Former; None: all of camera_keys (official: both).
    video_former_cameras: list[str] | None = None
    # Camera whose predicted frames feed the GIDM; None: the first camera (official: static).
    gidm_camera: str | None = None
    # Which two predicted GFDM frames the GIDM compares (official: 0 and 5, hard-coded; docs/method.md §8.5).
    gidm_frame_indices: tuple[int, int] = (0, 5)
    # Official sampling keeps only start frames with >= 21 frames left in the episode (min_window_size 21).
    drop_n_last_frames: int = 20
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.MIN_MAX,
            "ENV": NormalizationMode.MIN_MAX,
            # CALVIN's relative actions are already in [-1, 1]: the CALVIN preset sets IDENTITY (official);
            # min-max keeps other datasets in the range the EDM's sigma_data = 0.5 assumes.
            "ACTION": NormalizationMode.MIN_MAX,
        }
    )
    # Binarise action[gripper_action_index] by sign to exactly -1/+1 on the way out, as the official CALVIN
    # rollout does (docs/method.md §8.24; the CALVIN preset sets true). None (default): decided from the training
    # data when the processors are made: on only if that channel is exactly -1/+1 in the dataset (a binary gripper),
    # off for continuous grippers and joints (SO-100/101, hands); the decision is saved in config.json.
    binarize_gripper: bool | None = None
    gripper_action_index: int = -1

    # --- GFDM: the frozen forward-dynamics video model ------------------------------------------------------
    # Diffusers folder or Hub repo with unet/ and vae/ (a GFDM from lerobot-defi-train-gfdm, the official
    # release's checkpoint-100000, or plain SVD image-to-video). None: build from gfdm_*_config.
    gfdm_path: str | None = "stabilityai/stable-video-diffusion-img2vid"
    gfdm_unet_config: dict | None = None
    gfdm_vae_config: dict | None = None
    gfdm_dtype: str = "float16"
    gfdm_num_frames: int = 16
    # A GFDM built from gfdm_*_config with random weights (tiny preset, stand-ins): its VAE is scaled so that
    # latents have this spread; SVD's VAE gives 1 / 0.18215. With diffusers' own init (None) the latents are
    # ~20x weaker than the GFDM's unit noise and the features hardly see the image (docs/training.md#s4).
    gfdm_random_latent_std: float | None = SVD_LATENT_STD
    # Up-blocks whose outputs are concatenated as features (1280 + 1280 = 2560 channels officially).
    feature_up_blocks: tuple[int, ...] = (0, 1)
    # Noise level of the single UNet pass ("timestep: 20" in the official config; docs/method.md §8.18).
    feature_sigma: float = 700.0
    # SVD micro-conditioning (fps id, motion bucket, noise augmentation) of the policy's UNet pass
    # (docs/method.md §8.7).
    added_time_ids: tuple[float, float, float] = (4.0, 127.0, 0.0)
    # None: fresh noise at every call, as officially (docs/method.md §8.8); an int: reproducible features.
    feature_noise_seed: int | None = None
    # FP8 (e4m3) matrix products in the frozen UNet: its linear layers and 1x1 convolutions, ~60 % of its FLOPs,
    # through torchao (models/gfdm_fp8.py, docs/performance.md#s5). Needs gfdm_dtype=bfloat16, torchao (the
    # package's [fp8] extra) and a GPU of compute capability >= 8.9 (Ada, Hopper); changes the features slightly
    # (measured by benchmarks/bench_policy.py). Checkpoints keep the bf16 weights.
    gfdm_fp8: bool = False

    # --- frozen text encoders -------------------------------------------------------------------------------
    clip_text_path: str | None = "openai/clip-vit-base-patch32"
    clip_text_config: dict | None = None
    clip_context_length: int = 20
    clip_goal_length: int = 77
    t5_path: str | None = "google-t5/t5-base"
    t5_config: dict | None = None
    # The original trains with the frozen T5's dropout (0.1) on: its training step puts the whole model in train
    # mode (docs/method.md §8.26). True reproduces that in training (T5 then re-runs every step instead of using
    # the instruction cache); inference never uses dropout.
    t5_dropout_in_training: bool = True

    # --- trainable parts ------------------------------------------------------------------------------------
    # A GIDM saved by lerobot-defi-train-gidm (folder or Hub repo); its encoder side initialises the policy's.
    gidm_path: str | None = None
    gidm: GIDMConfig = field(default_factory=GIDMConfig)
    # Hidden width of the MLP projecting GFDM features of the two GIDM frames to the GIDM width.
    gidm_input_hidden_dim: int = 768
    # Std of the learned embedding of the two GIDM frames at initialisation; the original's N(0, 1) swamps the
    # projected features (docs/training.md#s4). Irrelevant when weights are loaded.
    gidm_frame_embedding_init_std: float = 0.02
    # Every N optimizer steps of lerobot-train, GIDM codes no sample chose since the last restart are set to recent
    # encoder outputs, so the latent actions do not collapse to one code per token (policy/codebook_restart.py);
    # 0: never (the original). Training only.
    gidm_code_restart_steps: int = 20
    video_former: VideoFormerConfig = field(default_factory=VideoFormerConfig)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)

    # --- training -------------------------------------------------------------------------------------------
    optimizer_lr: float = 1e-4
    # Learning rate of the GIDM encoder (the part a pretrained GIDM initialises); None: optimizer_lr, as the
    # original. At a rate far above the original's 1e-4 (e.g. the tiny preset's 3e-3) Stage 3 overwrites a
    # pretrained GIDM within ~100 steps and its codes collapse to one per token (docs/training.md#s4).
    gidm_lr: float | None = None
    optimizer_betas: tuple[float, float] = (0.9, 0.9)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 0.05
    # 0 disables clipping (official Stage 3 has none; docs/method.md §8.23).
    optimizer_grad_clip_norm: float = 0.0
    # "constant": the official effective schedule (docs/method.md §8.1); "tristage": the intended one.
    lr_schedule: str = "constant"
    # Linear warm-up of the constant schedule from 0 to optimizer_lr over this many steps; 0: none (the original).
    # Without it a policy trained from scratch can lock into a context that ignores the image in its first steps
    # (docs/training.md#s4).
    lr_warmup_steps: int = 500
    # Noise levels and noises drawn per chunk in the action head's EDM loss; the context, the expensive part, is
    # computed once and shared. The original draws 1; one draw's noisy gradient often drives a policy trained from
    # scratch to a context that ignores the image (docs/training.md#s4). Training only.
    loss_noise_draws: int = 8
    # torch.compile mode for the GPU-heavy modules (GFDM pass, Video Former, GIDM, action head), e.g.
    # "reduce-overhead" (CUDA graphs) or "default"; None runs eagerly. Numerics are unchanged up to float
    # rounding (tests/test_fast_paths.py).
    compile_mode: str | None = None
    # Where compiled artefacts are kept between processes, so a restarted policy skips most of the compilation
    # (policy/compile_cache.py, docs/performance.md): "auto" = $HF_LEROBOT_HOME/defi_compile_cache, a folder,
    # or None / "off" to compile from scratch in every process.
    compile_cache_dir: str | None = "auto"
    # Mixed precision of the trainable parts under lerobot-train (bfloat16 | float16 | float32); None leaves it
    # to accelerate's own setting.
    dtype: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.n_obs_steps != 1:
            raise ValueError(f"DeFI reads one observation step; got n_obs_steps={self.n_obs_steps}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) must be between 1 and chunk_size ({self.chunk_size})"
            )
        if self.lr_schedule not in ("constant", "tristage"):
            raise ValueError(f"lr_schedule must be 'constant' or 'tristage', got {self.lr_schedule!r}")
        if self.loss_noise_draws < 1:
            raise ValueError(f"loss_noise_draws must be >= 1, got {self.loss_noise_draws}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.gidm_code_restart_steps < 0:
            raise ValueError(f"gidm_code_restart_steps must be >= 0, got {self.gidm_code_restart_steps}")
        if self.gfdm_dtype not in FROZEN_DTYPES:
            raise ValueError(f"gfdm_dtype must be one of {FROZEN_DTYPES}, got {self.gfdm_dtype!r}")
        if self.gfdm_fp8 and self.gfdm_dtype != "bfloat16":
            raise ValueError(
                f"gfdm_fp8=true needs gfdm_dtype=bfloat16 (FP8 with per-row scales converts bf16 weights), got "
                f"gfdm_dtype={self.gfdm_dtype!r}"
            )
        if len(self.gidm_frame_indices) != 2 or not all(
            0 <= i < self.gfdm_num_frames for i in self.gidm_frame_indices
        ):
            raise ValueError(
                f"gidm_frame_indices must be two frame indices in [0, {self.gfdm_num_frames}), "
                f"got {self.gidm_frame_indices}"
            )
        if self.gfdm_path is None and (self.gfdm_unet_config is None or self.gfdm_vae_config is None):
            raise ValueError(
                "Give gfdm_path (a diffusers folder or Hub repo) or both gfdm_unet_config and gfdm_vae_config"
            )

    # --- cameras --------------------------------------------------------------------------------------------
    @property
    def cameras(self) -> list[str]:
        """Camera keys the policy reads, in order."""
        return list(self.camera_keys) if self.camera_keys else list(self.image_features)

    @property
    def video_former_camera_keys(self) -> list[str]:
        return list(self.video_former_cameras) if self.video_former_cameras else self.cameras

    @property
    def gidm_camera_key(self) -> str:
        return self.gidm_camera or self.cameras[0]

    @property
    def gfdm_camera_keys(self) -> list[str]:
        """Cameras that go through the GFDM: those the Video Former or the GIDM need, in camera order."""
        needed = set(self.video_former_camera_keys) | {self.gidm_camera_key}
        return [key for key in self.cameras if key in needed]

    @property
    def action_dim(self) -> int:
        return self.action_feature.shape[0]

    # --- LeRobot hooks --------------------------------------------------------------------------------------
    def validate_features(self) -> None:
        inputs = sorted(self.input_features or {})
        if not self.image_features:
            raise ValueError(
                "DeFI needs at least one camera: no VISUAL input feature (observation.images.*) in the dataset; "
                f"input features are {inputs}"
            )
        if self.action_feature is None:
            raise ValueError(
                f"DeFI needs an '{ACTION}' output feature; output features are {sorted(self.output_features or {})}"
            )
        if len(self.action_feature.shape) != 1 or self.action_feature.shape[0] < 1:
            raise ValueError(f"DeFI expects a 1-D action vector, got shape {self.action_feature.shape}")
        if self.binarize_gripper and not -self.action_dim <= self.gripper_action_index < self.action_dim:
            raise ValueError(
                f"gripper_action_index {self.gripper_action_index} is outside the action vector of dim "
                f"{self.action_dim}; set --policy.binarize_gripper=false for actions without a gripper"
            )
        for name, keys in (
            ("camera_keys", self.camera_keys or []),
            ("video_former_cameras", self.video_former_cameras or []),
            ("gidm_camera", [self.gidm_camera] if self.gidm_camera else []),
        ):
            unknown = [k for k in keys if k not in self.image_features]
            if unknown:
                raise ValueError(
                    f"{name} names camera(s) {unknown} that the dataset does not have; cameras are "
                    f"{list(self.image_features)}"
                )
        if self.gidm_camera_key not in self.cameras:
            raise ValueError(f"gidm_camera {self.gidm_camera_key!r} is not among camera_keys {self.cameras}")

    def binarize_gripper_from_stats(self, dataset_stats: dict | None) -> bool | None:
        """Whether the training data's ``action[gripper_action_index]`` is a binary -1/+1 channel (from LeRobot
        statistics); None without action statistics. Reads the config only."""
        action_stats = (dataset_stats or {}).get(ACTION)
        if action_stats is None:
            return None
        return action_channel_is_binary(action_stats, self.gripper_action_index)

    def decide_binarize_gripper(self, dataset_stats: dict | None) -> bool:
        """``binarize_gripper``, deciding it from the training data's statistics when it is None (the default):
        True only if ``action[gripper_action_index]`` is a binary -1/+1 channel. The decision is recorded in the
        config (saved with the policy); without statistics nothing is decided and the answer is False."""
        if self.binarize_gripper is not None:
            return self.binarize_gripper
        decided = self.binarize_gripper_from_stats(dataset_stats)
        if decided is None:
            return False
        self.binarize_gripper = decided
        logger.info(
            "binarize_gripper=%s: action[%d] of the training data %s (set --policy.binarize_gripper to override)",
            str(self.binarize_gripper).lower(),
            self.gripper_action_index,
            "is exactly -1/+1 (a binary gripper)" if self.binarize_gripper else "is not a -1/+1 channel",
        )
        return self.binarize_gripper

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> LRSchedulerConfig | None:
        if self.lr_schedule == "tristage":
            return TriStageSchedulerConfig()
        if self.lr_warmup_steps:
            return DiffuserSchedulerConfig(name="constant_with_warmup", num_warmup_steps=self.lr_warmup_steps)
        return None


def action_channel_is_binary(action_stats: dict, index: int, tolerance: float = 1e-4) -> bool:
    """Whether action channel ``index`` holds only -1 and +1, from LeRobot statistics (``min``, ``max``, ``mean``,
    ``std``): min -1, max +1 and variance 1 - mean^2, which values in [-1, 1] reach only when all are -1 or +1."""
    try:
        low, high, mean, std = (
            float(np.asarray(action_stats[k], dtype=np.float64).reshape(-1)[index])
            for k in ("min", "max", "mean", "std")
        )
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return low == -1.0 and high == 1.0 and std**2 >= 1.0 - mean**2 - tolerance


def load_preset(name_or_path: str, **overrides) -> DeFIConfig:
    """The ``policy`` section of a shipped preset (``"tiny"`` -> ``configs/defi_tiny.yaml``) or of any
    train-config YAML/JSON, as a :class:`DeFIConfig`; ``overrides`` set fields (``camera_keys=[...]``)."""
    import json
    from pathlib import Path

    import draccus
    import yaml

    from lerobot_defi.presets import preset_path

    path = Path(name_or_path)
    if not path.is_file():
        path = preset_path(
            name_or_path if name_or_path.endswith((".yaml", ".json")) else f"defi_{name_or_path}.yaml"
        )
    data = (
        yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    )
    section = dict(data.get("policy", data))
    if section.pop("type", "defi") != "defi":
        raise ValueError(f"{path} does not describe a defi policy")
    config = draccus.decode(DeFIConfig, section)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise AttributeError(f"DeFIConfig has no field {key!r}")
        setattr(config, key, value)
    config.__post_init__()
    return config
