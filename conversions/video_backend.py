"""Which video decoder LeRobot can use on this machine, found once and said in one line.

LeRobot decodes dataset videos with ``torchcodec`` when it loads, else with PyAV. torchcodec needs FFmpeg's
shared libraries (versions 4 to 8) on the system; without them LeRobot logs a page of loader tracebacks each
time it picks a default backend. The commands of this package find the backend once with
:func:`video_backend`, pass it to LeRobot explicitly, and print :func:`describe_video_backend` instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util


@functools.cache
def video_backend() -> tuple[str, str]:
    """``(backend, why)``: ``"torchcodec"`` when it loads (LeRobot's preferred decoder), else ``"pyav"``."""
    if importlib.util.find_spec("torchcodec") is None:
        return "pyav", "torchcodec is not installed"
    try:
        importlib.import_module("torchcodec")
    except (ImportError, OSError, RuntimeError) as err:  # what LeRobot's own probe catches
        text = str(err)
        if "libavutil" in text or "FFmpeg" in text:
            return (
                "pyav",
                "torchcodec needs FFmpeg's shared libraries (versions 4 to 8), which are not installed",
            )
        first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return "pyav", f"torchcodec cannot be loaded: {first_line}"
    return "torchcodec", "torchcodec loads (FFmpeg's shared libraries are installed)"


def describe_video_backend() -> str:
    """One line for people, e.g. ``video decoding: pyav (torchcodec needs FFmpeg's shared libraries ...)``."""
    backend, why = video_backend()
    return f"video decoding: {backend} ({why})"
