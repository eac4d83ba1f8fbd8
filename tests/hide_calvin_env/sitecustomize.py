"""With ``DEFI_HIDE_CALVIN_ENV=1``: this Python process cannot import the installed CALVIN simulator, as on a
machine without it (a newcomer's, before "Install the simulator").

``tests/conftest.py`` loads this file in the test process and puts its folder first on ``PYTHONPATH``, where
Python imports ``sitecustomize`` at start-up: the command lines and worker processes the tests start hide it too.
Only the installed ``calvin_env`` is hidden; another folder of that name (a clone on the import path, as a test
makes) is still found as on such a machine.
"""

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

HIDE_VARIABLE = "DEFI_HIDE_CALVIN_ENV"


class HiddenCalvinEnv(importlib.abc.MetaPathFinder):
    """Refuses ``calvin_env`` when the other finders would load it from ``installed`` (its package folder)."""

    def __init__(self, installed: Path):
        self.installed = installed

    def find_spec(self, name, path=None, target=None):
        if name != "calvin_env":
            return None
        for finder in sys.meta_path:
            spec = (
                None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            )
            if spec is not None:
                break
        else:
            return None
        locations = [spec.origin] if spec.origin not in (None, "namespace") else []
        locations += list(spec.submodule_search_locations or [])
        if any(Path(where).resolve().is_relative_to(self.installed) for where in locations):
            raise ModuleNotFoundError(f"No module named 'calvin_env' (hidden: {HIDE_VARIABLE}=1)", name=name)
        return spec


def hide_installed_calvin_env() -> None:
    """Put a :class:`HiddenCalvinEnv` first on ``sys.meta_path`` (nothing to do when calvin_env is not installed)."""
    if any(isinstance(finder, HiddenCalvinEnv) for finder in sys.meta_path):
        return
    spec = importlib.util.find_spec("calvin_env")  # locates the package without importing it
    if spec is None or spec.origin in (None, "namespace"):
        return
    sys.meta_path.insert(0, HiddenCalvinEnv(Path(spec.origin).resolve().parent))


if os.environ.get(HIDE_VARIABLE) == "1":
    hide_installed_calvin_env()
