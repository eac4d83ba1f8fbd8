"""Importing the authors' Stage-2 latent action model (a Lightning checkpoint whose ``state_dict`` holds
``lam.*``) as a :class:`~lerobot_defi.models.gidm.LatentActionModel` folder (docs/method.md §3.5): the
architecture is read off the tensor shapes, every tensor is renamed through the key map with shape checks."""

from collections.abc import Mapping
from pathlib import Path

import torch

from lerobot_defi.models.gidm import GIDMConfig, LatentActionModel
from lerobot_defi.official.cards import gidm_card
from lerobot_defi.official.checkpoints import OfficialCheckpointError, load_stage2_state_dict, sha256_file
from lerobot_defi.official.keymap import map_state_dict, stage2_keymap
from lerobot_defi.official.report import (
    atomic_output_dir,
    check_unused,
    log_result,
    missing_message,
    write_report,
)


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
        raise OfficialCheckpointError(missing_message(ckpt, result, keymap, "the latent action model", hint))
    check_unused(ckpt, result, strict)
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
        write_report(staging, report)
        gidm_card(report).save(staging / "README.md")
    log_result("GIDM", result)
    return report
