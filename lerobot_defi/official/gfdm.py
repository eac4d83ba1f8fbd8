"""Importing the released GFDM (``checkpoint-100000``, a diffusers SVD pipeline folder): check that
:class:`GFDMFeatureExtractor` reads it as it is (only ``unet/`` and ``vae/``; ``image_encoder/``,
``feature_extractor/``, ``scheduler/`` and ``model_index.json`` are ignored), and optionally write a slim copy
without the unused 632 M-parameter image encoder."""

import json
import logging
import shutil
from pathlib import Path

import torch

from lerobot_defi.models.gfdm import GFDM_SUBFOLDERS, GFDMFeatureExtractor, check_gfdm_folder
from lerobot_defi.official.cards import gfdm_card
from lerobot_defi.official.checkpoints import OfficialCheckpointError, sha256_file
from lerobot_defi.official.report import atomic_output_dir, write_report

logger = logging.getLogger(__name__)

# Read from a GFDM folder; other entries of a diffusers SVD pipeline folder are ignored.
GFDM_EXTRA_COPIED = ("scheduler",)


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
            write_report(staging, {"kind": "gfdm", "source": info})
            gfdm_card(info).save(staging / "README.md")
    return info
