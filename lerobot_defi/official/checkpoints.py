"""Reading the authors' checkpoint files safely: the weights-only unpickler with inert placeholders, the state
dicts of the Stage-3 policy file and the Stage-2 Lightning file, and file hashes for the reports.

Checkpoints are read with ``torch.load(weights_only=True)``; non-tensor Python objects in them (the Hydra config
under ``args``, Lightning hyper-parameters) become inert placeholders, so nothing in a file is ever executed.
"""

import hashlib
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class OfficialCheckpointError(ValueError):
    """An official file is missing tensors, has other shapes, or is not in the expected format."""


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


def load_official_checkpoint(path: str | Path) -> Any:
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
    return _tensor_dict(
        load_official_checkpoint(path), "model", Path(path), "an official DeFI Stage-3 checkpoint"
    )


def load_stage2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``lam.*`` state dict of the official Stage-2 Lightning checkpoint."""
    return _tensor_dict(
        load_official_checkpoint(path),
        "state_dict",
        Path(path),
        "an official Lightning latent-action checkpoint",
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
