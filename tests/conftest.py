"""Test session setup: offline mode and plugin registration; shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import shutil
from pathlib import Path

import pytest
from defi_test_utils import CALVIN_SLICE, TESTS_DIR

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


@pytest.fixture(autouse=True)
def restore_logging_handlers():
    """Command lines under test install logging handlers on the root logger (LeRobot's ``init_logging``) bound
    to the stderr pytest captured for that test; put the root logger back so a later test does not log into a
    closed capture."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def calvin_slice() -> Path:
    if not CALVIN_SLICE.is_dir():
        pytest.fail(f"the CALVIN test slice is missing: {CALVIN_SLICE}")
    return CALVIN_SLICE


@pytest.fixture
def broken_bridge(tmp_path):
    """A writable copy of the bridge slice plus a helper that rewrites annotation 10."""
    root = tmp_path / "bridge"
    shutil.copytree(TESTS_DIR / "data" / "vpp_slice" / "bridge", root)
    (root / "videos" / "val" / "10" / "state.npy").unlink()  # else it stands in for a missing 'state'
    json_path = root / "annotation" / "val" / "10.json"

    def rewrite(**changes):
        data = json.loads(json_path.read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        json_path.write_text(json.dumps(data))
        return json_path

    return root, rewrite
