"""Test session setup: offline mode, plugin registration, inductor (one cache folder for the session, C++ kernels
without SIMD: docs/installation.md#s2), the CALVIN simulator (skips and hiding); shared fixtures.

Tests that need the real CALVIN simulator are marked ``calvin_env`` and skip, with the reason, where it cannot be
imported. ``DEFI_HIDE_CALVIN_ENV=1`` hides an installed simulator from the tests and every process they start,
to run them as on a machine without it (``.ci/run`` does once): ``tests/hide_calvin_env/sitecustomize.py``.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # One inductor cache for the session and the processes it starts, removed at its end: tests that compile
    # the same graph share its kernels, and no compiled graph outlives the run, so a second run costs what a fresh
    # machine's does (torch still keeps its precompiled C++ header in inductor's default folder). Set
    # TORCHINDUCTOR_CACHE_DIR to keep one between runs.
    _inductor_dir = tempfile.mkdtemp(prefix="defi-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _inductor_dir
    atexit.register(shutil.rmtree, _inductor_dir, ignore_errors=True)

import importlib.util
import json
from pathlib import Path

import pytest
from defi_test_utils import CALVIN_SLICE, TESTS_DIR, compile_scalar_cpu_kernels

import lerobot_policy_defi  # noqa: F401  (registers the defi policy type and its processor steps)
from lerobot_defi.envs.calvin_simulator import calvin_env_available

compile_scalar_cpu_kernels()

HIDE_CALVIN_ENV_DIR = Path(__file__).resolve().parent / "hide_calvin_env"


def hide_calvin_env() -> None:
    """This process and the ones it starts cannot import the installed simulator (``DEFI_HIDE_CALVIN_ENV=1``)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HIDE_CALVIN_ENV_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    spec = importlib.util.spec_from_file_location("hide_calvin_env", HIDE_CALVIN_ENV_DIR / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # hides it when run with the variable set


if os.environ.get("DEFI_HIDE_CALVIN_ENV") == "1":  # before anything imports calvin_env (no import above does)
    hide_calvin_env()

CALVIN_ENV_SKIP_REASON = (
    "needs the real CALVIN simulator (calvin_env), which cannot be imported here: "
    "see the README section 'Install the simulator'"
)


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``calvin_env`` (directly, by their module or by a parameter) without the simulator."""
    if calvin_env_available():
        return
    skip = pytest.mark.skip(reason=CALVIN_ENV_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("calvin_env") is not None:
            item.add_marker(skip)


def pytest_report_header(config):
    from lerobot_defi.conversions.video_backend import describe_video_backend

    hidden = " (hidden: DEFI_HIDE_CALVIN_ENV=1)" if os.environ.get("DEFI_HIDE_CALVIN_ENV") == "1" else ""
    simulator = "importable" if calvin_env_available() else f"not importable{hidden}"
    return [describe_video_backend(), f"CALVIN simulator (calvin_env): {simulator}"]


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
