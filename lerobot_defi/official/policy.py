"""Importing the authors' Stage-3 policy (``saved_models/*.pt``: ``{'model': state_dict, 'args': hydra_cfg}``)
together with the released GFDM folder as a self-contained DeFI policy folder (``DeFIPolicy.from_pretrained``,
processors, tokenizers; docs/method.md §4.9). The Stage-3 file already holds the fine-tuned latent action model,
so the Stage-2 checkpoint is not needed here."""

import dataclasses
import logging
from pathlib import Path

import torch

from lerobot_defi.models.gfdm import GFDMFeatureExtractor
from lerobot_defi.official.cards import policy_card
from lerobot_defi.official.checkpoints import OfficialCheckpointError, load_stage3_state_dict, sha256_file
from lerobot_defi.official.gfdm import inspect_gfdm_folder
from lerobot_defi.official.keymap import map_state_dict, stage3_keymap
from lerobot_defi.official.report import (
    atomic_output_dir,
    check_unused,
    log_result,
    missing_message,
    write_report,
)

logger = logging.getLogger(__name__)

CALVIN_CAMERAS = {"observation.images.static": (3, 200, 200), "observation.images.gripper": (3, 84, 84)}
CALVIN_ACTION_DIM = 7
TEXT_ENCODER_SOURCES = ("checkpoint", "pretrained")


def official_calvin_config(**overrides):
    """The official CALVIN recipe as a :class:`DeFIConfig` (defaults are the official values; the two CALVIN
    cameras, static first, and the 7-D relative action)."""
    from lerobot.configs import NormalizationMode
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_defi.policy.configuration_defi import DeFIConfig

    config = DeFIConfig(
        camera_keys=list(CALVIN_CAMERAS),
        gidm_camera="observation.images.static",
        **{"binarize_gripper": True, **overrides},  # the authors' CALVIN policy binarises its gripper
    )
    config.normalization_mapping = {**config.normalization_mapping, "ACTION": NormalizationMode.IDENTITY}
    config.input_features = {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in CALVIN_CAMERAS.items()}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (CALVIN_ACTION_DIM,))}
    return config


def _architecture_dict(hf_config) -> dict:
    return {
        k: v
        for k, v in hf_config.to_diff_dict().items()
        if not k.startswith("_") and k != "transformers_version"
    }


def _text_encoders(config, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The text encoders' architecture dicts for the config (``{"clip_text_config": ..., "t5_config": ...}``, only
    those it needs) and, with ``source="pretrained"``, their weights loaded from ``clip_text_path`` / ``t5_path``
    under our names."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    architectures: dict[str, dict] = {}
    state: dict[str, torch.Tensor] = {}
    for name, path_field, config_field, config_cls, model_cls in (
        ("clip", "clip_text_path", "clip_text_config", CLIPTextConfig, CLIPTextModelWithProjection),
        ("t5", "t5_path", "t5_config", T5Config, T5EncoderModel),
    ):
        path = getattr(config, path_field)
        if source == "pretrained":
            if path is None:
                raise ValueError(
                    f"--text_encoders=pretrained needs the config's {path_field} (a Hub id or folder)"
                )
            model = model_cls.from_pretrained(path)
            architectures[config_field] = _architecture_dict(model.config)
            state |= {f"text.{name}.{k}": v for k, v in model.state_dict().items()}
        elif getattr(config, config_field) is None:
            if path is None:
                raise ValueError(f"the config gives neither {path_field} nor {config_field}")
            architectures[config_field] = _architecture_dict(config_cls.from_pretrained(path))
    return architectures, state


def _release_config(config, gfdm: GFDMFeatureExtractor, gfdm_folder: Path, text_architectures: dict):
    """``config`` completed for the release (a new config): CALVIN features where it has none, raw actions, the
    GFDM folder and its architecture, the text architectures, no separate GIDM, a binarised gripper unless it
    says otherwise."""
    from lerobot.configs import NormalizationMode
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_defi.models.gfdm import diffusers_config

    return dataclasses.replace(
        config,
        input_features=config.input_features
        or {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in CALVIN_CAMERAS.items()},
        output_features=config.output_features
        or {"action": PolicyFeature(FeatureType.ACTION, (CALVIN_ACTION_DIM,))},
        # The official policy regresses raw CALVIN relative actions (docs/method.md §4.2): no normalisation.
        normalization_mapping={**config.normalization_mapping, "ACTION": NormalizationMode.IDENTITY},
        gfdm_path=str(gfdm_folder),
        gfdm_unet_config=diffusers_config(gfdm.unet),
        gfdm_vae_config=diffusers_config(gfdm.vae),
        gidm_path=None,  # the Stage-3 file carries the fine-tuned GIDM
        # The authors' weights act on CALVIN, whose gripper is -1/+1.
        binarize_gripper=True if config.binarize_gripper is None else config.binarize_gripper,
        **text_architectures,
    )


def import_policy(
    stage3: str | Path,
    gfdm: str | Path,
    output: str | Path,
    *,
    config=None,
    text_encoders: str = "checkpoint",
    strict: bool = False,
    overwrite: bool = False,
) -> dict:
    """Build a DeFI policy folder from the official Stage-3 checkpoint and GFDM folder; returns the report.

    ``config``: a :class:`DeFIConfig` giving the architecture, cameras and text encoder ids (default: the
    official CALVIN recipe, :func:`official_calvin_config`). ``text_encoders``: ``"checkpoint"`` takes the
    frozen CLIP/T5 weights from the Stage-3 file (exactly what the official policy ran with),
    ``"pretrained"`` loads them from the config's ids. ``strict``: also fail on official tensors that no rule
    uses. ``config`` is not changed: the saved config is it completed with the GFDM and text architectures,
    features and action normalisation; it records the device this machine resolved (``--policy.device``
    overrides it).
    """
    from lerobot_defi.policy.modeling_defi import DeFIPolicy
    from lerobot_defi.policy.pretrained_parts import gfdm_options
    from lerobot_defi.policy.processor_defi import make_defi_pre_post_processors

    if text_encoders not in TEXT_ENCODER_SOURCES:
        raise ValueError(f"text_encoders must be one of {TEXT_ENCODER_SOURCES}, got {text_encoders!r}")
    stage3, gfdm_folder = Path(stage3), Path(gfdm)
    gfdm_info = inspect_gfdm_folder(gfdm_folder)
    config = config if config is not None else official_calvin_config()
    official = load_stage3_state_dict(stage3)
    logger.info("%s: %d official tensors", stage3, len(official))

    gfdm_model = GFDMFeatureExtractor.from_pretrained(
        gfdm_folder, dtype=getattr(torch, config.gfdm_dtype), **gfdm_options(config)
    )
    text_architectures, pretrained_text = _text_encoders(config, text_encoders)
    config = _release_config(config, gfdm_model, gfdm_folder, text_architectures)

    with atomic_output_dir(output, overwrite) as staging:
        # Frozen parts as empty skeletons (weights assigned below), trainable parts allocated; the tokenizers
        # come from the config's ids (or the offline byte-level ones of a test preset).
        policy = DeFIPolicy(config, pretrained_dir=staging)
        expected = {
            k: v
            for k, v in policy.state_dict().items()
            if not k.startswith("gfdm.") and not (pretrained_text and k.startswith("text."))
        }
        tied: dict[int, list[str]] = {}
        for name, parameter in policy.named_parameters(remove_duplicate=False):
            tied.setdefault(id(parameter), []).append(name)
        keymap = stage3_keymap(text_encoders_from_checkpoint=text_encoders == "checkpoint")
        result = map_state_dict(official, expected, keymap, tied=[g for g in tied.values() if len(g) > 1])
        if result.missing or result.shape_mismatches:
            hint = (
                "The architecture comes from --policy_config (default: the official CALVIN recipe) and the GFDM "
                "folder "
                "(feature channels and grid); the official release needs 2560 feature channels on a 16x16 grid."
            )
            if any(n.startswith("text.") for n in result.missing):
                hint += " Frozen text encoders absent from the file: pass --text_encoders=pretrained."
            raise OfficialCheckpointError(missing_message(stage3, result, keymap, "the DeFI policy", hint))
        check_unused(stage3, result, strict)

        state = dict(result.state) | pretrained_text
        state |= {f"gfdm.{k}": v for k, v in gfdm_model.state_dict().items()}
        policy.load_state_dict(state, strict=True, assign=True)
        policy.save_pretrained(staging)
        preprocessor, postprocessor = make_defi_pre_post_processors(policy.config)
        preprocessor.save_pretrained(staging)
        postprocessor.save_pretrained(staging)
        trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
        report = {
            "kind": "policy",
            "stage3": {"file": str(stage3.resolve()), "sha256": sha256_file(stage3)},
            "gfdm": gfdm_info,
            "text_encoders": text_encoders,
            "trainable_tensors_filled": len(trainable & set(result.state)),
            "trainable_tensors": len(trainable),
            "key_map": result.summary(),
            "skipped": result.skipped,
        }
        write_report(staging, report)
        policy_card(report, policy.config).save(staging / "README.md")
    log_result("policy", result)
    return report
