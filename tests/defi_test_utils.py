"""Helpers shared by the tests: paths, tiny DeFI configs and batches, official architecture dicts."""

from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from lerobot_defi.policy.configuration_defi import DeFIConfig, load_preset

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
SHARED_DATA = REPO_DIR.parent / "shared" / "data"
CALVIN_SLICE = TESTS_DIR / "data" / "calvin_mini_slice"

CALVIN_CAMERAS = {"observation.images.static": (3, 200, 200), "observation.images.gripper": (3, 84, 84)}


def compile_scalar_cpu_kernels() -> None:
    """Inductor writes its C++ (CPU) kernels of this process without SIMD: on a 2-core machine the tiny policy's
    graphs compile in two thirds of the time (docs/installation.md#s2). The compile tests check graphs, compile
    caches and numerics against eager, none of which depends on CPU vectorisation; the GPU tests compile Triton
    kernels as users do. The processes the tests start that compile call it too, so that their graphs and the
    tests' share keys in the session's inductor cache (the setting is part of them)."""
    import torch._inductor.config

    torch._inductor.config.cpp.simdlen = 0


def tiny_config(
    cameras: dict[str, tuple[int, int, int]] | None = None, action_dim: int = 7, **overrides
) -> DeFIConfig:
    """The tiny preset with dataset-like features (two CALVIN cameras and a 7-D action by default)."""
    config = load_preset("tiny", **overrides)
    cameras = CALVIN_CAMERAS if cameras is None else cameras
    config.input_features = {key: PolicyFeature(FeatureType.VISUAL, shape) for key, shape in cameras.items()}
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (action_dim,))}
    return config


def tiny_batch(
    config: DeFIConfig, batch_size: int = 3, seed: int = 0, tasks: list[str] | None = None
) -> dict:
    """A preprocessed training batch for ``config``: images in [-1, 1] at image_size, tasks, actions."""
    generator = torch.Generator().manual_seed(seed)
    size = config.image_size
    batch = {
        key: torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1 for key in config.cameras
    }
    default_tasks = ["open the drawer", "push the red block to the left", "turn on the light bulb"]
    batch["task"] = tasks or [default_tasks[i % 3] for i in range(batch_size)]
    batch["action"] = (
        torch.rand(batch_size, config.chunk_size, config.action_dim, generator=generator) * 2 - 1
    )
    batch["action_is_pad"] = torch.zeros(batch_size, config.chunk_size, dtype=torch.bool)
    return batch


def assert_stopped_incomplete(repo_id: str, root: Path, written: int, planned: int) -> dict:
    """A conversion stopped by bad input: LeRobotDataset refuses the folder with one line saying it is incomplete,
    and the progress file records planned vs written episodes and the error. Returns the progress file."""
    import json

    import pytest
    from lerobot.datasets import LeRobotDataset
    from lerobot_defi.conversions.conversion_progress import PROGRESS_FILE

    progress = json.loads((root / PROGRESS_FILE).read_text())
    assert progress["finalized"] is False and (progress["written"], progress["planned"]) == (written, planned)
    assert progress["error"].startswith("bad input in source episode")
    expected = (
        f"INCOMPLETE dataset: the conversion stopped on bad input after {written} of {planned} episodes"
    )
    with pytest.raises(ValueError, match=expected) as refused:
        LeRobotDataset(repo_id, root=root)
    assert "\n" not in str(refused.value)
    return progress


def error_line(stderr: str) -> str:
    """The ``error: ...`` line a converter printed last; asserts it is one line of its own (after the progress
    bar, not on it)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), lines[-3:]
    return lines[-1]
