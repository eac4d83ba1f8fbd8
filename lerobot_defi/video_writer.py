"""H.264 mp4 files from RGB frames through PyAV: the one video writer of the package.

:class:`VideoWriter` encodes frames as they come (a long evaluation never holds its video in memory);
:func:`write_video` writes a whole ``(T, H, W, 3)`` array. Both write to a hidden temporary file beside ``path`` and
rename it when the video is complete, so an interrupted run never leaves a truncated file under the final name.
Frames are ``(H, W, 3)`` uint8 RGB; yuv420p needs even sides, so an odd height or width is padded by one row or
column of ``pad_value`` (255: white). The encoder's statistics are kept off the console while a writer is open.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import av
import av.logging
import numpy as np

DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18  # visually lossless for H.264


class VideoWriter:
    """Encode frames into ``path`` one by one; ``close()`` (or leaving the ``with`` block) finishes the file.

    crf: H.264 quality (lower is better, 18 by default; None leaves the encoder's default); ignored by codecs
    other than libx264. Leaving a ``with`` block through an exception discards the partial file.
    """

    def __init__(
        self,
        path: str | Path,
        fps: int,
        *,
        codec: str = DEFAULT_CODEC,
        crf: int | None = DEFAULT_CRF,
        pad_value: int = 255,
    ):
        self.path = Path(path)
        self.fps = fps
        self.codec = codec
        self.crf = crf
        self.pad_value = pad_value
        self.num_frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self._container = None
        self._stream = None
        self._previous_log_level = None

    def add(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame (all frames of a video have the size of the first)."""
        frame = self._even_sides(np.asarray(frame, dtype=np.uint8))
        if self._stream is None:
            self._open(height=frame.shape[0], width=frame.shape[1])
        elif frame.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(
                f"{self.path}: frame {self.num_frames} is {frame.shape[1]}x{frame.shape[0]}, the video is "
                f"{self._stream.width}x{self._stream.height}"
            )
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(video_frame))
        self.num_frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file to ``path``; returns ``path``."""
        if self._container is None:
            raise ValueError(f"{self.path}: no frame was written")
        try:
            self._container.mux(self._stream.encode())
            self._container.close()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            self._container = None
            av.logging.set_level(self._previous_log_level)
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Stop without writing ``path`` (removes the partial file)."""
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None
                av.logging.set_level(self._previous_log_level)
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._previous_log_level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)  # keep the encoder's banner and statistics off the console
        self._container = av.open(str(self._tmp), mode="w")
        self._stream = self._container.add_stream(self.codec, rate=self.fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        if self.codec == "libx264" and self.crf is not None:
            self._stream.options = {"crf": str(self.crf)}

    def _even_sides(self, frame: np.ndarray) -> np.ndarray:
        pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=self.pad_value)
        return frame


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int,
    *,
    codec: str = DEFAULT_CODEC,
    crf: int | None = DEFAULT_CRF,
    pad_value: int = 255,
) -> Path:
    """Write ``frames`` (a ``(T, H, W, 3)`` uint8 array or any iterable of ``(H, W, 3)`` frames) as an mp4 at
    ``path``, atomically; returns ``path``."""
    with VideoWriter(path, fps, codec=codec, crf=crf, pad_value=pad_value) as writer:
        for frame in frames:
            writer.add(frame)
    return writer.path
