"""Test session setup: offline mode and plugin registration; shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from defi_test_utils import CALVIN_SLICE

import lerobot_policy_defi  # noqa: F401  (registers the defi policy type and its processor steps)


def pytest_report_header(config):
    from lerobot_defi.conversions.video_backend import describe_video_backend

    return describe_video_backend()


@pytest.fixture(autouse=True, scope="session")
def one_video_backend_probe():
    """LeRobot probes torchcodec each time a dataset is opened without ``video_backend`` and, without FFmpeg's
    shared libraries, logs a page of loader tracebacks each time; the tests use the backend found once (the
    one LeRobot would pick, named in the report header)."""
    from lerobot.datasets import lerobot_dataset, video_utils
    from lerobot_defi.conversions.video_backend import video_backend

    patch = pytest.MonkeyPatch()
    for module in (lerobot_dataset, video_utils):
        patch.setattr(module, "get_safe_default_video_backend", lambda: video_backend()[0])
    yield
    patch.undo()


@pytest.fixture
def calvin_slice() -> Path:
    if not CALVIN_SLICE.is_dir():
        pytest.fail(f"the CALVIN test slice is missing: {CALVIN_SLICE}")
    return CALVIN_SLICE
