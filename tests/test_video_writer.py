"""The package's one video writer: frames in, an mp4 out (atomically), frame by frame or from an array."""

import av
import numpy as np
import pytest

from lerobot_defi.video_writer import VideoWriter, write_video


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_frames_round_trip_and_odd_sides_are_padded(tmp_path):
    ramp = np.linspace(0, 255, 33 * 41 * 3).reshape(33, 41, 3).astype(np.uint8)
    frames = np.stack([np.roll(ramp, shift, axis=1) for shift in range(6)])
    path = write_video(tmp_path / "sub" / "clip.mp4", frames, fps=5)
    decoded = _decode(path)
    assert decoded.shape == (6, 34, 42, 3)  # one white row and column make the sides even for yuv420p
    assert np.abs(decoded[:, :33, :41].astype(float) - frames).mean() < 4
    assert (decoded[:, 33:, :] > 200).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.mp4"]


def test_frame_by_frame_and_nothing_left_when_interrupted(tmp_path):
    with VideoWriter(tmp_path / "stream.mp4", fps=10) as writer:
        for value in range(0, 250, 50):
            writer.add(np.full((16, 24, 3), value, dtype=np.uint8))
    assert writer.num_frames == 5 and len(_decode(tmp_path / "stream.mp4")) == 5

    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "broken.mp4", fps=10) as writer:
        writer.add(np.zeros((16, 24, 3), dtype=np.uint8))
        raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream.mp4"]
    with (
        pytest.raises(ValueError, match="frame 1 is 8x8, the video is 24x16"),
        VideoWriter(tmp_path / "sizes.mp4", fps=10) as writer,
    ):
        writer.add(np.zeros((16, 24, 3), dtype=np.uint8))
        writer.add(np.zeros((8, 8, 3), dtype=np.uint8))
    assert not (tmp_path / "sizes.mp4").exists()
