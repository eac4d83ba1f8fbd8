"""Videos of CALVIN evaluation sequences: both cameras side by side, the instruction underneath.

Frames are encoded as they come (H.264 through ``lerobot_defi.video_writer``), so a 1800-step sequence never
sits in memory.
The caption band turns green after a solved task and red after a failed one (held for a few frames).
"""

from pathlib import Path

import cv2
import numpy as np

from lerobot_defi.video_writer import VideoWriter

PANEL_SIZE = 200  # both cameras are shown at 200 x 200
CAPTION_HEIGHT = 40
OUTCOME_HOLD_FRAMES = 10
BAND_COLORS = {None: (40, 40, 40), True: (30, 140, 30), False: (170, 30, 30)}


def compose_frame(observation: dict, caption: str, outcome: bool | None = None) -> np.ndarray:
    """(240, 400, 3) uint8: static | gripper camera above a caption band coloured by ``outcome``."""
    static = observation["pixels"]["static"]
    gripper = cv2.resize(
        observation["pixels"]["gripper"], (PANEL_SIZE, PANEL_SIZE), interpolation=cv2.INTER_NEAREST
    )
    frame = np.zeros((PANEL_SIZE + CAPTION_HEIGHT, 2 * PANEL_SIZE, 3), dtype=np.uint8)
    frame[:PANEL_SIZE, :PANEL_SIZE] = static
    frame[:PANEL_SIZE, PANEL_SIZE:] = gripper
    frame[PANEL_SIZE:] = BAND_COLORS[outcome]
    cv2.putText(
        frame,
        caption[:64],
        (6, PANEL_SIZE + 26),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.42,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return frame


class SequenceVideoWriter:
    """Writes one sequence's frames to ``path`` (mp4) while it runs, through the package's one video writer
    (the file appears under ``path`` when ``close()`` finishes it)."""

    def __init__(self, path: str | Path, fps: int = 30):
        self.path = Path(path)
        self._writer = VideoWriter(self.path, fps, crf=None)  # the encoder's default quality, as before

    @property
    def num_frames(self) -> int:
        return self._writer.num_frames

    def add(self, observation: dict, caption: str, outcome: bool | None = None) -> None:
        """Append the frame of ``observation``; with an ``outcome`` it is held a few frames, coloured."""
        frame = compose_frame(observation, caption, outcome)
        for _ in range(OUTCOME_HOLD_FRAMES if outcome is not None else 1):
            self._writer.add(frame)

    def close(self) -> None:
        """Finish the file (a sequence that stopped before its first frame leaves none)."""
        if self._writer.num_frames:
            self._writer.close()
        else:
            self._writer.discard()
