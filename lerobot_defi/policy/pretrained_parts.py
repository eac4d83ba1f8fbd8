"""The pretrained parts of a DeFI policy, and the one place where they complete its configuration.

A :class:`DeFIConfig` names each pretrained part by a path (``gfdm_path``, ``clip_text_path``, ``t5_path``,
``gidm_path``: a Hub id or folder) or by an architecture (``gfdm_unet_config``, ...). Building a policy is:

1. :func:`load_pretrained_parts` builds the frozen GFDM and text encoders and loads the GIDM of ``gidm_path``; it
   reads the config and never changes it. With ``pretrained_dir`` (a saved policy being loaded) the frozen parts
   are empty skeletons built from the recorded architectures; their weights come from the checkpoint.
2. :func:`resolve_pretrained_architectures` returns the config the policy runs with and saves: a new config, the
   given one with the fields of :data:`RESOLVED_FIELDS` filled from the parts, so that a saved policy rebuilds
   offline from its own ``config.json``:

   * ``gfdm_unet_config``, ``gfdm_vae_config``, ``clip_text_config``, ``t5_config``: the architectures of the
     frozen parts as built;
   * ``gidm``: the architecture of the GIDM at ``gidm_path`` when one is loaded (the config's own
     ``tiled_padding_mask`` quirk flag is kept), with ``num_patches`` = (GFDM feature grid)^2 and ``text_dim`` =
     the T5 width, which the policy's GIDM reads;
   * ``binarize_gripper``: when None, decided from the training data's statistics as the processors decide it
     (``lerobot-train`` makes the policy before its processors; both see the same statistics).

:func:`with_saved_architectures` completes a config given to ``DeFIPolicy.from_pretrained`` (``lerobot-train
--resume`` passes the run's own configuration) with the architectures recorded in the saved folder, which its
weights need.
"""

import dataclasses
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import init_empty_weights

from lerobot_defi.models.gfdm import GFDMFeatureExtractor, diffusers_config
from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.models.text import InstructionEncoders, load_clip_text, load_t5
from lerobot_defi.policy.configuration_defi import DeFIConfig

TOKENIZER_DIRS = {"clip": "clip_tokenizer", "t5": "t5_tokenizer"}
RESOLVED_FIELDS = (
    "gfdm_unet_config",
    "gfdm_vae_config",
    "clip_text_config",
    "t5_config",
    "gidm",
    "binarize_gripper",
)
ARCHITECTURE_DICTS = ("gfdm_unet_config", "gfdm_vae_config", "clip_text_config", "t5_config")


@dataclasses.dataclass
class PretrainedParts:
    """The frozen GFDM and text encoders, their architecture dicts, and the GIDM loaded from ``gidm_path`` (None
    without one, and when a saved policy is loaded: its GIDM weights are in the checkpoint)."""

    gfdm: GFDMFeatureExtractor
    text: InstructionEncoders
    clip_text_config: dict
    t5_config: dict
    gidm: LatentActionModel | None = None


def load_pretrained_parts(config: DeFIConfig, pretrained_dir: str | Path | None = None) -> PretrainedParts:
    """Build the pretrained parts that ``config`` names (see the module docstring); ``config`` is not changed."""
    skeleton = pretrained_dir is not None
    with init_empty_weights(include_buffers=False) if skeleton else nullcontext():
        gfdm = _build_gfdm(config, skeleton)
        text, clip_text_config, t5_config = _build_text(config, skeleton, pretrained_dir)
    if skeleton:  # ties are lost on the meta device; restore them (outside init_empty_weights) before loading
        text.clip.tie_weights()
        text.t5.tie_weights()
    gidm = None
    if not skeleton and config.gidm_path is not None:
        gidm = LatentActionModel.from_pretrained(config.gidm_path)
    return PretrainedParts(gfdm, text, clip_text_config, t5_config, gidm)


def resolve_pretrained_architectures(
    config: DeFIConfig, parts: PretrainedParts, dataset_stats: dict | None = None
) -> DeFIConfig:
    """``config`` plus the fields of :data:`RESOLVED_FIELDS` taken from ``parts`` (a new config; ``config`` is not
    changed)."""
    gidm = config.gidm if parts.gidm is None else adopt_gidm_architecture(config.gidm, parts.gidm.config)
    grid = parts.gfdm.feature_grid(config.image_size)
    gidm = dataclasses.replace(gidm, num_patches=grid * grid, text_dim=parts.text.t5.config.d_model)
    binarize_gripper = config.binarize_gripper
    if binarize_gripper is None:
        binarize_gripper = config.binarize_gripper_from_stats(dataset_stats)
    return dataclasses.replace(
        config,
        gfdm_unet_config=diffusers_config(parts.gfdm.unet),
        gfdm_vae_config=diffusers_config(parts.gfdm.vae),
        clip_text_config=parts.clip_text_config,
        t5_config=parts.t5_config,
        gidm=gidm,
        binarize_gripper=binarize_gripper,
    )


def adopt_gidm_architecture(own: GIDMConfig, pretrained: GIDMConfig) -> GIDMConfig:
    """The GIDM config of a policy whose GIDM starts from a pretrained one: the pretrained GIDM's, keeping the
    policy's own ``tiled_padding_mask`` (a quirk flag of the policy, docs/method.md §8.10)."""
    return GIDMConfig(**{**dataclasses.asdict(pretrained), "tiled_padding_mask": own.tiled_padding_mask})


def with_saved_architectures(config: DeFIConfig, saved: dict) -> DeFIConfig:
    """``config`` completed with what the saved policy's ``config.json`` (``saved``) records and its weights need:
    the architecture dicts ``config`` leaves at None, and, when ``config`` starts its GIDM from ``gidm_path``, the
    GIDM architecture adopted from it when the policy was made."""
    changes = {
        name: saved[name] for name in ARCHITECTURE_DICTS if getattr(config, name) is None and saved.get(name)
    }
    if config.gidm_path is not None and saved.get("gidm"):
        changes["gidm"] = adopt_gidm_architecture(config.gidm, GIDMConfig(**saved["gidm"]))
    return dataclasses.replace(config, **changes) if changes else config


def gfdm_options(config: DeFIConfig) -> dict:
    """How the policy runs its GFDM (keyword arguments of ``GFDMFeatureExtractor`` besides the weights)."""
    return {
        "num_frames": config.gfdm_num_frames,
        "feature_up_blocks": tuple(config.feature_up_blocks),
        "feature_sigma": config.feature_sigma,
        "added_time_ids": tuple(config.added_time_ids),
    }


def _build_gfdm(config: DeFIConfig, skeleton: bool) -> GFDMFeatureExtractor:
    options = gfdm_options(config)
    dtype = getattr(torch, config.gfdm_dtype)
    if config.gfdm_path is not None and not skeleton:
        return GFDMFeatureExtractor.from_pretrained(config.gfdm_path, dtype=dtype, **options)
    if config.gfdm_unet_config is not None and config.gfdm_vae_config is not None:
        return GFDMFeatureExtractor.from_configs(
            config.gfdm_unet_config,
            config.gfdm_vae_config,
            dtype=dtype,
            # random weights are calibrated; a skeleton's weights come from the checkpoint
            latent_std=None if skeleton else config.gfdm_random_latent_std,
            image_size=config.image_size,
            **options,
        )
    raise ValueError(
        "This DeFI config records no GFDM architecture (gfdm_unet_config / gfdm_vae_config); "
        "it cannot be rebuilt from a checkpoint"
    )


def _build_text(
    config: DeFIConfig, skeleton: bool, pretrained_dir: str | Path | None
) -> tuple[InstructionEncoders, dict, dict]:
    tokenizer_root = Path(pretrained_dir) if pretrained_dir is not None else None
    clip, clip_tokenizer, clip_text_config = load_clip_text(
        config.clip_text_path,
        config.clip_text_config,
        tokenizer_root / TOKENIZER_DIRS["clip"] if tokenizer_root else None,
        skeleton=skeleton,
    )
    t5, t5_tokenizer, t5_config = load_t5(
        config.t5_path,
        config.t5_config,
        tokenizer_root / TOKENIZER_DIRS["t5"] if tokenizer_root else None,
        skeleton=skeleton,
    )
    encoders = InstructionEncoders(
        clip,
        clip_tokenizer,
        t5,
        t5_tokenizer,
        context_length=config.clip_context_length,
        goal_length=config.clip_goal_length,
    )
    return encoders, clip_text_config, t5_config
