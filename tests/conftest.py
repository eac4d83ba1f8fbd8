"""Test session setup: offline mode and plugin registration; shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from defi_test_utils import CALVIN_SLICE

import lerobot_policy_defi  # noqa: F401  (registers the defi policy type and its processor steps)


@pytest.fixture
def calvin_slice() -> Path:
    if not CALVIN_SLICE.is_dir():
        pytest.fail(f"the CALVIN test slice is missing: {CALVIN_SLICE}")
    return CALVIN_SLICE
