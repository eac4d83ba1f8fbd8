"""Inputs of the GFDM tests: small real LeRobotDatasets, written with ``LeRobotDataset.create`` from real
frames (CALVIN npz frames of ``tests/data/calvin_mini_slice`` or ``shared/data/calvin_mini``, VPP sample videos of
``tests/data/vpp_slice``), and the tiny SVD networks of ``configs/gfdm_tiny.yaml``."""

import json
from pathlib import Path

import av
import numpy as np
import torch
import yaml
from defi_test_utils import CALVIN_SLICE, REPO_DIR, SHARED_DATA, TESTS_DIR

VPP_SLICE = TESTS_DIR / "data" / "vpp_slice"
TINY = yaml.safe_load((REPO_DIR / "configs" / "gfdm_tiny.yaml").read_text())


def tiny_models():
    """The tiny preset's UNet and VAE with seeded random weights, in eval mode."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel.from_config(TINY["model"]["unet_config"]).eval()
    vae = AutoencoderKLTemporalDecoder.from_config(TINY["model"]["vae_config"]).eval()
    return unet, vae


def calvin_training_dir() -> Path | None:
    """A CALVIN-layout ``training/`` folder with language windows, or None when no copy is present."""
    for root in (CALVIN_SLICE, SHARED_DATA / "calvin_mini"):
        folder = root / "training"
        if (folder / "lang_annotations" / "auto_lang_ann.npy").is_file():
            return folder
    return None


def calvin_windows(training_dir: Path) -> list[tuple[int, int, str]]:
    """``(start, end, instruction)`` of the language windows whose frames are all present."""
    annotations = np.load(training_dir / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    windows = []
    for (start, end), text in zip(annotations["info"]["indx"], annotations["language"]["ann"]):
        if all((training_dir / f"episode_{i:07d}.npz").is_file() for i in range(start, end)):
            windows.append((int(start), int(end), str(text)))
    return windows


def _create(root: Path, repo_id: str, fps: int, cameras: dict[str, tuple[int, int]]):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        f"observation.images.{name}": {
            "dtype": "video",
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
        for name, (h, w) in cameras.items()
    }
    features["action"] = {"dtype": "float32", "shape": (1,), "names": ["a"]}
    return LeRobotDataset.create(repo_id, fps=fps, features=features, root=root, use_videos=True)


def make_calvin_dataset(root: Path, episode_frames: int = 24, num_episodes: int = 3) -> tuple[Path, list]:
    """Episodes = consecutive ``episode_frames``-frame pieces of the language windows (static 200x200 and
    gripper 84x84 cameras, task = the window's sentence), ``num_episodes`` of them (the committed slice has two
    48-frame windows, so pieces of one window may follow each other). Returns the root and
    ``[(frames_static, task)]``."""
    training = calvin_training_dir()
    pieces = [
        (first, min(end, first + episode_frames), text)
        for start, end, text in calvin_windows(training)
        for first in range(start, end - episode_frames + 1, episode_frames)
    ][:num_episodes]
    if len(pieces) < num_episodes:
        raise ValueError(f"{training} holds only {len(pieces)} pieces of {episode_frames} frames")
    dataset = _create(root, "local/calvin_gfdm", 30, {"static": (200, 200), "gripper": (84, 84)})
    episodes = []
    for first, last, text in pieces:
        statics = []
        for i in range(first, last):
            frame = np.load(training / f"episode_{i:07d}.npz")
            statics.append(frame["rgb_static"])
            dataset.add_frame(
                {
                    "observation.images.static": frame["rgb_static"],
                    "observation.images.gripper": frame["rgb_gripper"],
                    "action": np.zeros(1, np.float32),
                    "task": text,
                }
            )
        dataset.save_episode()
        episodes.append((np.stack(statics), text))
    dataset.finalize()
    return root, episodes


def read_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def make_vpp_video_dataset(root: Path, name: str, repo_id: str) -> tuple[Path, list[str]]:
    """One episode per annotation of ``vpp_slice/<name>/annotation/val`` from its rgb.mp4 (task = texts[0])."""
    folder = VPP_SLICE / name
    annotations = sorted((folder / "annotation" / "val").glob("*.json"))
    first = json.loads(annotations[0].read_text())
    h, w = read_video(folder / first["videos"][0]["video_path"]).shape[1:3]
    dataset = _create(root, repo_id, 10, {"rgb": (h, w)})
    tasks = []
    for path in annotations:
        data = json.loads(path.read_text())
        for frame in read_video(folder / data["videos"][0]["video_path"]):
            dataset.add_frame(
                {"observation.images.rgb": frame, "action": np.zeros(1, np.float32), "task": data["texts"][0]}
            )
        dataset.save_episode()
        tasks.append(data["texts"][0])
    dataset.finalize()
    return root, tasks


def make_synthetic_dataset(root: Path, tasks: list[str], frames_per_episode: int, size: int = 32) -> Path:
    """Random-colour episodes (one per task string) for the bad-input tests."""
    dataset = _create(root, "local/synthetic", 10, {"cam": (size, size)})
    rng = np.random.default_rng(0)
    for task in tasks:
        for _ in range(frames_per_episode):
            dataset.add_frame(
                {
                    "observation.images.cam": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                    "action": np.zeros(1, np.float32),
                    "task": task,
                }
            )
        dataset.save_episode()
    dataset.finalize()
    return root
