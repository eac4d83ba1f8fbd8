"""``lerobot-defi-import-official``: load the authors' released DeFI weights into this package (spec 1.2, 3.5,
3.6, 4.9; section 8 items 16, 17, 19, 20).

One subcommand per released artifact; each output folder is written atomically (a hidden temporary folder
beside it, renamed when complete) and carries a model card naming its source and an import report:

* ``policy --stage3 last.pt --gfdm checkpoint-100000 --output DIR``: the Stage-3 policy (``{'model':
  state_dict, 'args': hydra_cfg}``) plus the GFDM folder -> a self-contained DeFI policy folder
  (``DeFIPolicy.from_pretrained``, processors, tokenizers). The Stage-3 file already holds the fine-tuned
  latent action model, so the Stage-2 checkpoint is not needed here.
* ``gidm --ckpt lam.ckpt --output DIR``: the Stage-2 Lightning checkpoint (``state_dict`` with ``lam.*``) ->
  a :class:`~lerobot_defi.models.gidm.LatentActionModel` folder (``--policy.gidm_path`` of a new policy).
* ``gfdm --folder checkpoint-100000 [--output DIR]``: checks that :class:`GFDMFeatureExtractor` reads the
  released SVD pipeline folder as it is (only ``unet/`` and ``vae/`` are read; ``image_encoder/``,
  ``feature_extractor/``, ``scheduler/`` and ``model_index.json`` are ignored); ``--output`` writes a slim copy
  without the unused 632 M-parameter image encoder.

Every official tensor is renamed through the explicit map in :mod:`lerobot_defi.official_keymap` with shape
checks; the import refuses to write a model with a tensor it could not fill, and reports official tensors it
did not use. Checkpoints are read with ``torch.load(weights_only=True)``; non-tensor Python objects in them
(the Hydra config under ``args``, Lightning hyper-parameters) become inert placeholders, so nothing in a file
is ever executed.
"""

import argparse
import hashlib
import json
import logging
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from tqdm.auto import tqdm

from lerobot_defi.models.gfdm import GFDM_SUBFOLDERS, GFDMFeatureExtractor, check_gfdm_folder
from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.official_keymap import KeyMap, KeyMapResult, map_state_dict, stage2_keymap, stage3_keymap

logger = logging.getLogger(__name__)

OFFICIAL_CODE = "https://github.com/LogosRoboticsGroup/DeFi"
OFFICIAL_CODE_COMMIT = "5682f96"  # the release the key map was written against
OFFICIAL_WEIGHTS = "https://huggingface.co/zbzzbz/DeFI"
CALVIN_CAMERAS = {"observation.images.static": (3, 200, 200), "observation.images.gripper": (3, 84, 84)}
CALVIN_ACTION_DIM = 7
REPORT_FILE = "official_import_report.json"
TEXT_ENCODER_SOURCES = ("checkpoint", "pretrained")
# Read from a GFDM folder; other entries of a diffusers SVD pipeline folder are ignored.
GFDM_EXTRA_COPIED = ("scheduler",)


class OfficialCheckpointError(ValueError):
    """An official file is missing tensors, has other shapes, or is not in the expected format."""


# --- reading official files ---------------------------------------------------------------------------------


class InertObject:
    """Stands in for a Python object of a checkpoint that is not a tensor or a plain container (e.g. the Hydra
    config under ``args``): it keeps its constructor arguments and state and runs nothing."""

    checkpoint_global = ""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.checkpoint_global}>"


def _inert_stand_in(global_name: str) -> type:
    return type(global_name.rsplit(".", 1)[-1], (InertObject,), {"checkpoint_global": global_name})


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` (memory-mapped when possible).

    Official files pickle non-tensor objects beside the weights (an omegaconf ``DictConfig`` under ``args``,
    Lightning's hyper-parameters), which the weights-only unpickler refuses. Those globals are then replaced
    by :class:`InertObject` stand-ins, still under ``weights_only=True``: no code from the file runs.
    Modules PyTorch blocks outright (``os``, ``subprocess``, ...) still fail, as they should.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    options = {"map_location": "cpu", "weights_only": True, "mmap": zipfile.is_zipfile(path)}
    try:
        return torch.load(path, **options)
    except pickle.UnpicklingError as error:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as inner:
            raise OfficialCheckpointError(f"{path} is not a readable PyTorch checkpoint: {inner}") from error
        if not names:
            raise OfficialCheckpointError(f"{path} could not be read safely: {error}") from error
    logger.info("%s: %d non-tensor Python globals read as inert placeholders: %s", path, len(names), names)
    stand_ins = [(_inert_stand_in(name), name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, **options)
    except pickle.UnpicklingError as error:
        raise OfficialCheckpointError(
            f"{path} refers to Python objects that PyTorch refuses to load even as inert placeholders; it is "
            f"not an official DeFI checkpoint and should not be trusted: {error}"
        ) from error


def _tensor_dict(checkpoint: Any, entry: str, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``checkpoint[entry]`` as ``{name: tensor}``; a DDP ``module.`` prefix on every key is removed."""
    if not isinstance(checkpoint, Mapping) or entry not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise OfficialCheckpointError(
            f"{path} is not {what}: expected a dict with a '{entry}' entry holding the state dict, found {keys}"
        )
    state = checkpoint[entry]
    if not isinstance(state, Mapping) or not state:
        raise OfficialCheckpointError(f"{path}: '{entry}' is not a non-empty state dict")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise OfficialCheckpointError(f"{path}: '{entry}' holds non-tensor entries, e.g. {not_tensors[:5]}")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_stage3_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The policy state dict of an official Stage-3 file (``saved_models/*.pt``: ``{'model', 'args'}``)."""
    return _tensor_dict(load_checkpoint(path), "model", Path(path), "an official DeFI Stage-3 checkpoint")


def load_stage2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``lam.*`` state dict of the official Stage-2 Lightning checkpoint."""
    return _tensor_dict(
        load_checkpoint(path), "state_dict", Path(path), "an official Lightning latent-action checkpoint"
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (progress bar for large files)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    progress = tqdm(
        total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", leave=False, disable=size < 1 << 28
    )
    with open(path, "rb") as f, progress as bar:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


# --- the GFDM folder ----------------------------------------------------------------------------------------


def inspect_gfdm_folder(folder: str | Path) -> dict:
    """Check a diffusers SVD pipeline folder (e.g. the released ``checkpoint-100000``) for what the GFDM loader
    reads, and say what it ignores. Returns a JSON-able description with the weight files' sha256."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"GFDM folder not found: {folder} (download the release first, see the README)"
        )
    check_gfdm_folder(folder)
    expected_classes = {"unet": "UNetSpatioTemporalConditionModel", "vae": "AutoencoderKLTemporalDecoder"}
    weights = {}
    for sub, cls in expected_classes.items():
        found = json.loads((folder / sub / "config.json").read_text()).get("_class_name")
        if found != cls:
            raise OfficialCheckpointError(
                f"{folder / sub / 'config.json'}: expected a {cls}, found {found!r}"
            )
        files = sorted(p for p in (folder / sub).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        weight_files = [p for p in files if p.suffix != ".json"]
        if not weight_files:
            raise FileNotFoundError(f"{folder / sub} has a config.json but no weight file")
        weights[sub] = {p.name: sha256_file(p) for p in weight_files}
    pipeline_class = None
    if (folder / "model_index.json").is_file():
        pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    return {
        "folder": str(folder.resolve()),
        "pipeline_class": pipeline_class,
        "read": list(GFDM_SUBFOLDERS),
        "ignored": sorted(p.name for p in folder.iterdir() if p.name not in GFDM_SUBFOLDERS),
        "weights_sha256": weights,
    }


def import_gfdm(folder: str | Path, output: str | Path | None = None, *, overwrite: bool = False) -> dict:
    """Load the released GFDM folder with our loader (as it is) and describe it; with ``output``, write a slim
    copy (``unet/``, ``vae/``, ``scheduler/``) with a model card."""
    info = inspect_gfdm_folder(folder)
    extractor = GFDMFeatureExtractor.from_pretrained(folder, dtype=torch.float16)
    info["feature_channels"] = extractor.feature_dim
    info["feature_grid_at_256px"] = extractor.feature_grid(256)
    info["matches_official_policy"] = extractor.feature_dim == 2560 and extractor.feature_grid(256) == 16
    logger.info(
        "GFDM %s reads as is: features %d channels on a %dx%d grid at 256 px; ignored: %s",
        folder,
        info["feature_channels"],
        info["feature_grid_at_256px"],
        info["feature_grid_at_256px"],
        info["ignored"],
    )
    del extractor
    if output is not None:
        with atomic_output_dir(output, overwrite) as staging:
            for sub in (*GFDM_SUBFOLDERS, *GFDM_EXTRA_COPIED):
                if (Path(folder) / sub).is_dir():
                    shutil.copytree(Path(folder) / sub, staging / sub)
            _write_report(staging, {"kind": "gfdm", "source": info})
            _model_card_gfdm(info).save(staging / "README.md")
    return info


# --- the Stage-3 policy -------------------------------------------------------------------------------------


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


def _prepare_text_encoders(config, source: str) -> dict[str, torch.Tensor]:
    """Record the text encoders' architectures in ``config``; with ``source="pretrained"`` also load their
    weights from ``clip_text_path`` / ``t5_path`` and return them under our names."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    state: dict[str, torch.Tensor] = {}
    for name, path_field, config_field, config_cls, model_cls in (
        ("clip", "clip_text_path", "clip_text_config", CLIPTextConfig, CLIPTextModelWithProjection),
        ("t5", "t5_path", "t5_config", T5Config, T5EncoderModel),
    ):
        path = getattr(config, path_field)
        if source == "pretrained":
            if path is None:
                raise ValueError(
                    f"--text-encoders pretrained needs the config's {path_field} (a Hub id or folder)"
                )
            model = model_cls.from_pretrained(path)
            setattr(config, config_field, _architecture_dict(model.config))
            state |= {f"text.{name}.{k}": v for k, v in model.state_dict().items()}
        elif getattr(config, config_field) is None:
            if path is None:
                raise ValueError(f"the config gives neither {path_field} nor {config_field}")
            setattr(config, config_field, _architecture_dict(config_cls.from_pretrained(path)))
    return state


def _prepare_policy_config(config, gfdm: GFDMFeatureExtractor, gfdm_folder: Path):
    from lerobot.configs import NormalizationMode
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_defi.models.gfdm import diffusers_config

    if not config.input_features:
        config.input_features = {k: PolicyFeature(FeatureType.VISUAL, s) for k, s in CALVIN_CAMERAS.items()}
    if not config.output_features:
        config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (CALVIN_ACTION_DIM,))}
    # The official policy regresses raw CALVIN relative actions (spec 4.2): no normalisation, no stats.
    config.normalization_mapping = {**config.normalization_mapping, "ACTION": NormalizationMode.IDENTITY}
    config.gfdm_path = str(gfdm_folder)
    config.gfdm_unet_config = diffusers_config(gfdm.unet)
    config.gfdm_vae_config = diffusers_config(gfdm.vae)
    config.gidm_path = None  # the Stage-3 file carries the fine-tuned GIDM
    return config


def _missing_message(path: Path, result: KeyMapResult, keymap: KeyMap, what: str, hint: str) -> str:
    lines = [f"{path}: cannot build {what}; refusing to write it."]
    if result.shape_mismatches:
        lines.append(f"{len(result.shape_mismatches)} official tensor(s) with another shape than ours:")
        lines += [f"  {line}" for line in result.shape_mismatch_lines()[:30]]
    absent = result.absent()
    if absent:
        lines.append(f"{len(absent)} tensor(s) of ours not filled by the checkpoint:")
        entries = []
        for source, target in keymap.subtrees:  # a whole frozen model absent: one line
            names = [n for n in absent if n.startswith(target)]
            if names:
                entries.append(f"{target}* ({len(names)} tensors: official {source}* is absent)")
                absent = [n for n in absent if not n.startswith(target)]
        for name in absent:
            official = keymap.official(name)
            entries.append(
                f"{name} (official {official} is missing)" if official else f"{name} (no official name)"
            )
        lines += [f"  {entry}" for entry in entries[:30]]
        if len(entries) > 30:
            lines.append(f"  ... and {len(entries) - 30} more")
    lines.append(hint)
    return "\n".join(lines)


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
    uses. ``config`` is completed in place (GFDM and text architectures, features, action normalisation);
    the saved config records the device this machine resolved (``--policy.device`` overrides it).
    """
    from lerobot_defi.policy.modeling_defi import DeFIPolicy
    from lerobot_defi.policy.processor_defi import make_defi_pre_post_processors

    if text_encoders not in TEXT_ENCODER_SOURCES:
        raise ValueError(f"text_encoders must be one of {TEXT_ENCODER_SOURCES}, got {text_encoders!r}")
    stage3, gfdm_folder = Path(stage3), Path(gfdm)
    gfdm_info = inspect_gfdm_folder(gfdm_folder)
    config = config if config is not None else official_calvin_config()
    if config.binarize_gripper is None:  # the authors' weights act on CALVIN, whose gripper is -1/+1
        config.binarize_gripper = True
    official = load_stage3_state_dict(stage3)
    logger.info("%s: %d official tensors", stage3, len(official))

    options = {
        "num_frames": config.gfdm_num_frames,
        "feature_up_blocks": tuple(config.feature_up_blocks),
        "feature_sigma": config.feature_sigma,
        "added_time_ids": tuple(config.added_time_ids),
    }
    gfdm_model = GFDMFeatureExtractor.from_pretrained(
        gfdm_folder, dtype=getattr(torch, config.gfdm_dtype), **options
    )
    _prepare_policy_config(config, gfdm_model, gfdm_folder)
    pretrained_text = _prepare_text_encoders(config, text_encoders)

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
                "The architecture comes from --config (default: the official CALVIN recipe) and the GFDM folder "
                "(feature channels and grid); the official release needs 2560 feature channels on a 16x16 grid."
            )
            if any(n.startswith("text.") for n in result.missing):
                hint += " Frozen text encoders absent from the file: pass --text-encoders pretrained."
            raise OfficialCheckpointError(_missing_message(stage3, result, keymap, "the DeFI policy", hint))
        _check_unused(stage3, result, strict)

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
        _write_report(staging, report)
        _model_card_policy(report, policy.config).save(staging / "README.md")
    _log_result("policy", result)
    return report


def _check_unused(path: Path, result: KeyMapResult, strict: bool) -> None:
    if not result.unused:
        return
    lines = [f"  {name}: {why}" for name, why in list(result.unused.items())[:30]]
    message = f"{path}: {len(result.unused)} official tensor(s) not used:\n" + "\n".join(lines)
    if strict:
        raise OfficialCheckpointError(message + "\n(--strict refuses unused official tensors)")
    logger.warning(message)


def _log_result(what: str, result: KeyMapResult) -> None:
    summary = result.summary()
    kinds: dict[str, int] = {}  # "dead", "redundant", ...: the word before the reason's colon
    for reason, count in summary["skipped_tensors_by_reason"].items():
        kind = reason.split(":")[0] if ":" in reason else reason
        kinds[kind] = kinds.get(kind, 0) + count
    logger.info(
        "%s: %d tensors (%.1f M values) imported; knowingly skipped: %s (reasons in %s); %d official tensors unused",
        what,
        summary["mapped_tensors"],
        summary["mapped_values"] / 1e6,
        ", ".join(f"{n} {kind}" for kind, n in kinds.items()) or "none",
        REPORT_FILE,
        len(result.unused),
    )


# --- the Stage-2 latent action model ------------------------------------------------------------------------


def gidm_config_from_state_dict(
    state: Mapping[str, torch.Tensor], path: Path, num_heads: int, num_patches: int
) -> GIDMConfig:
    """Architecture sizes read off the official tensor shapes; head count and patch count (not visible in
    shapes) are given (official: 12 heads, 16x16 = 256 patches)."""
    required = (
        "lam.action_latent",
        "lam.to_codebook.weight",
        "lam.vq.codebook.weight",
        "lam.lang_proj.weight",
    )
    absent = [k for k in required if k not in state]
    if absent:
        raise OfficialCheckpointError(
            f"{path} is not an official latent-action checkpoint: missing {absent} (expected keys lam.*)"
        )

    def count_blocks(prefix: str) -> int:
        indices = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        return max(indices) + 1 if indices else 0

    queries = state["lam.action_latent"]
    model_dim = queries.shape[-1]
    encoder_blocks = count_blocks("lam.encoder.transformer_blocks.")
    if encoder_blocks == 0:
        raise OfficialCheckpointError(f"{path}: no lam.encoder.transformer_blocks.* tensors")
    hidden = state["lam.encoder.transformer_blocks.0.ffn.0.weight"].shape[0]
    if model_dim % num_heads:
        raise OfficialCheckpointError(
            f"{path}: model width {model_dim} is not divisible by {num_heads} heads"
        )
    return GIDMConfig(
        model_dim=model_dim,
        num_heads=num_heads,
        encoder_blocks=encoder_blocks,
        decoder_blocks=count_blocks("lam.decoder.transformer_blocks."),
        mlp_ratio=hidden // model_dim,
        latent_dim=state["lam.to_codebook.weight"].shape[0],
        codebook_size=state["lam.vq.codebook.weight"].shape[0],
        num_latent_tokens=queries.shape[2],
        num_patches=num_patches,
        text_dim=state["lam.lang_proj.weight"].shape[1],
    )


def import_gidm(
    ckpt: str | Path,
    output: str | Path,
    *,
    num_heads: int = 12,
    num_patches: int = 256,
    strict: bool = False,
    overwrite: bool = False,
) -> dict:
    """Convert the official Stage-2 checkpoint into a :class:`LatentActionModel` folder; returns the report."""
    ckpt = Path(ckpt)
    official = load_stage2_state_dict(ckpt)
    config = gidm_config_from_state_dict(official, ckpt, num_heads, num_patches)
    model = LatentActionModel(config)
    keymap = stage2_keymap()
    result = map_state_dict(official, model.state_dict(), keymap)
    if result.missing or result.shape_mismatches:
        hint = "The sizes are read from the checkpoint; a missing tensor means the file is incomplete."
        raise OfficialCheckpointError(_missing_message(ckpt, result, keymap, "the latent action model", hint))
    _check_unused(ckpt, result, strict)
    model.load_state_dict(result.state, strict=True)
    with atomic_output_dir(output, overwrite) as staging:
        model.save_pretrained(staging)
        report = {
            "kind": "gidm",
            "stage2": {"file": str(ckpt.resolve()), "sha256": sha256_file(ckpt)},
            "config": model.config_dict(),
            "key_map": result.summary(),
            "skipped": result.skipped,
        }
        _write_report(staging, report)
        _model_card_gidm(report).save(staging / "README.md")
    _log_result("GIDM", result)
    return report


# --- output folders, cards, Hub -----------------------------------------------------------------------------


@contextmanager
def atomic_output_dir(output: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``output``; rename it to ``output`` only when the block succeeds
    (replacing an existing folder only with ``overwrite``). On error nothing is left behind."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        previous = output.parent / f".{output.name}.replaced-{uuid.uuid4().hex[:8]}"
        output.rename(previous)
        staging.rename(output)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        staging.rename(output)


def _write_report(folder: Path, report: dict) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")


def _card(tags: list[str], body: str) -> ModelCard:
    data = ModelCardData(
        license="other",
        license_name="mixed",
        library_name="lerobot",
        pipeline_tag="robotics",
        tags=["defi", "robotics", "lerobot", *tags],
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


_LICENSES = (
    "Licenses: the official DeFI code is Apache-2.0; the GFDM is a fine-tune of "
    "`stabilityai/stable-video-diffusion-img2vid` and is bound by Stability AI's license for it; CLIP ViT-B/32 "
    "(MIT) and T5-base (Apache-2.0) keep theirs."
)


def _model_card_policy(report: dict, config) -> ModelCard:
    key_map = report["key_map"]
    skipped = "\n".join(
        f"- {n} tensor(s): {reason}" for reason, n in key_map["skipped_tensors_by_reason"].items()
    )
    text = (
        "taken from the Stage-3 checkpoint (`TVP_encoder.text_encoder.*` -> CLIP, `lam.text_encoder.*` -> T5)"
        if report["text_encoders"] == "checkpoint"
        else f"loaded from `{config.clip_text_path}` and `{config.t5_path}`"
    )
    body = f"""
# DeFI policy (official release, imported)

The DeFI policy of *Disentangled Robot Learning via Separate Forward and Inverse Dynamics Pretraining*
(ICLR 2026) trained by the authors on CALVIN ABC->D, converted for LeRobot with
`lerobot-defi-import-official` (package `lerobot_policy_defi`). Nothing was retrained.

## Source

- Weights: {OFFICIAL_WEIGHTS}
- Code the key map follows: {OFFICIAL_CODE} (commit `{OFFICIAL_CODE_COMMIT}`)
- Stage-3 checkpoint: `{Path(report["stage3"]["file"]).name}` (sha256 `{report["stage3"]["sha256"]}`)
- GFDM (fine-tuned SVD) folder: `{Path(report["gfdm"]["folder"]).name}`; weights sha256 in
  `{REPORT_FILE}`. The GFDM is stored inside `model.safetensors` (truncated UNet + VAE encoder).
- Frozen text encoders: {text}.

## Import

{key_map["mapped_tensors"]} tensors ({key_map["mapped_values"] / 1e6:.1f} M values) mapped by name with shape checks;
{report["trainable_tensors_filled"]} of {report["trainable_tensors"]} trainable tensors filled. Official tensors
knowingly not used:

{skipped}

## Use

```python
from lerobot_defi.policy.modeling_defi import DeFIPolicy
policy = DeFIPolicy.from_pretrained("<this folder or repo>")
```

Inputs: `observation.images.static` and `observation.images.gripper` (CALVIN RGB), the instruction under
`task`; output: 7-D relative action, gripper binarised by sign. To reproduce the authors' numbers: CALVIN
ABC->D, 1000 five-task sequences, **720 steps per subtask** as in the official evaluation script (the CALVIN
protocol is 360; report both), GFDM micro-conditioning `added_time_ids={tuple(config.added_time_ids)}`, latent
actions from predicted frames `{tuple(config.gidm_frame_indices)}` of the static camera, 10 sampler steps down
to sigma {config.action_head.sigma_min_infer}.

{_LICENSES}
"""
    return _card(["calvin", "imported"], body)


def _model_card_gidm(report: dict) -> ModelCard:
    cfg = report["config"]
    skipped = "\n".join(
        f"- {n} tensor(s): {reason}" for reason, n in report["key_map"]["skipped_tensors_by_reason"].items()
    )
    body = f"""
# DeFI GIDM (official Stage-2 latent action model, imported)

The general inverse-dynamics model of DeFI (a latent-action VQ model on DINOv2 patch features with T5
instructions, pretrained by the authors on Open-X-Embodiment + Ego4D), converted to
`lerobot_defi.models.gidm.LatentActionModel` with `lerobot-defi-import-official gidm`.

- Weights: {OFFICIAL_WEIGHTS}; code: {OFFICIAL_CODE} (commit `{OFFICIAL_CODE_COMMIT}`)
- Checkpoint: `{Path(report["stage2"]["file"]).name}` (sha256 `{report["stage2"]["sha256"]}`)
- Architecture: width {cfg["model_dim"]}, {cfg["encoder_blocks"]} encoder + {cfg["decoder_blocks"]} decoder
  blocks, {cfg["num_heads"]} heads, {cfg["num_latent_tokens"]} latent tokens from a codebook of
  {cfg["codebook_size"]} x {cfg["latent_dim"]}.

Not converted:
{skipped}

Use as the starting GIDM of a new DeFI policy: `--policy.gidm_path=<this folder or repo>`.

{_LICENSES}
"""
    return _card(["gidm", "latent-action", "imported"], body)


def _model_card_gfdm(info: dict) -> ModelCard:
    body = f"""
# DeFI GFDM (official Stage-1 video model, imported)

The language-conditioned Stable Video Diffusion fine-tune of DeFI (released as `checkpoint-100000`), reduced to
what `lerobot_defi.models.gfdm.GFDMFeatureExtractor` reads (`unet/`, `vae/`, plus `scheduler/`). Dropped: the
unused CLIP ViT-H image encoder and the pipeline index. Features: {info["feature_channels"]} channels on a
{info["feature_grid_at_256px"]}x{info["feature_grid_at_256px"]} grid for 256 px images.

- Weights: {OFFICIAL_WEIGHTS}; code: {OFFICIAL_CODE} (commit `{OFFICIAL_CODE_COMMIT}`)
- Weight files and sha256: see `{REPORT_FILE}`.

Use as `--policy.gfdm_path=<this folder or repo>`.

{_LICENSES}
"""
    return _card(["gfdm", "video-diffusion", "imported"], body)


def push_folder_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a written folder as a Hub model repo (created if needed); returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message="Import the official DeFI release with lerobot-defi-import-official",
    )
    return info.repo_url.url if hasattr(info, "repo_url") else str(info)


# --- command line -------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lerobot-defi-import-official",
        description="Convert the authors' released DeFI weights (Stage-3 policy, Stage-2 latent action model, "
        "GFDM folder) into lerobot_policy_defi formats.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, output_required=True):
        p.add_argument("--output", type=Path, required=output_required, help="folder to write (atomically)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the written folder to this Hub repo")
        p.add_argument("--private", action="store_true", help="create the Hub repo as private")

    policy = sub.add_parser("policy", help="Stage-3 checkpoint + GFDM folder -> DeFI policy folder")
    policy.add_argument("--stage3", type=Path, required=True, help="official saved_models/*.pt")
    policy.add_argument(
        "--gfdm", type=Path, required=True, help="official SVD pipeline folder (checkpoint-100000)"
    )
    policy.add_argument(
        "--config",
        help="DeFI preset name or YAML/JSON config for the architecture, cameras and text encoder ids "
        "(default: the official CALVIN recipe)",
    )
    policy.add_argument(
        "--text-encoders",
        choices=TEXT_ENCODER_SOURCES,
        default="checkpoint",
        help="frozen CLIP/T5 weights from the Stage-3 file (default) or from the config's pretrained ids",
    )
    policy.add_argument("--strict", action="store_true", help="fail on official tensors that no rule uses")
    common(policy)

    gidm = sub.add_parser("gidm", help="Stage-2 Lightning checkpoint -> LatentActionModel folder")
    gidm.add_argument("--ckpt", type=Path, required=True, help="official latent-action .ckpt (keys lam.*)")
    gidm.add_argument("--num-heads", type=int, default=12, help="attention heads (official 12)")
    gidm.add_argument("--num-patches", type=int, default=256, help="patches per frame (official 16x16)")
    gidm.add_argument("--strict", action="store_true", help="fail on official tensors that no rule uses")
    common(gidm)

    gfdm = sub.add_parser("gfdm", help="check the GFDM folder reads as is; --output writes a slim copy")
    gfdm.add_argument("--folder", type=Path, required=True, help="official SVD pipeline folder")
    common(gfdm, output_required=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.push_to_hub and args.output is None:
        parser.error("--push-to-hub needs --output (the folder to upload)")
    try:
        if args.command == "policy":
            config = None
            if args.config:
                from lerobot_defi.policy.configuration_defi import load_preset

                config = load_preset(args.config)
            import_policy(
                args.stage3,
                args.gfdm,
                args.output,
                config=config,
                text_encoders=args.text_encoders,
                strict=args.strict,
                overwrite=args.overwrite,
            )
        elif args.command == "gidm":
            import_gidm(
                args.ckpt,
                args.output,
                num_heads=args.num_heads,
                num_patches=args.num_patches,
                strict=args.strict,
                overwrite=args.overwrite,
            )
        else:
            import_gfdm(args.folder, args.output, overwrite=args.overwrite)
    except (OfficialCheckpointError, FileNotFoundError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    if args.output is not None:
        print(f"wrote {args.output}")
    if args.push_to_hub:
        print(f"pushed to {push_folder_to_hub(args.output, args.push_to_hub, args.private)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
