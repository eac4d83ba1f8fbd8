"""Rebuild ``tests/data/calvin_eval`` from the real recording ``../shared/data/calvin_mini``.

Keeps, for each of the recording's three episodes (each starts from a CALVIN evaluation initial
condition and solves 3-4 tasks), the per-frame ``robot_obs``, ``scene_obs`` and ``rel_actions``
(no images) and the episode metadata of ``recording_report.json``; plus the two camera images of the
first frame of episode 0 (EGL-rendered by the real simulator, to check the env's rendering). The CALVIN env tests replay these
actions, in the real simulator when it is installed and through a playback stand-in otherwise.
Run from the repository root:

    python tests/data/calvin_eval/make_calvin_eval_data.py ../shared/data/calvin_mini
"""

import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("robot_obs", "scene_obs", "rel_actions")


def main(source: Path, target: Path) -> None:
    report = json.loads((source / "recording_report.json").read_text())
    arrays, episodes = {}, []
    for number, episode in enumerate(report["episodes"]):
        frames = [
            np.load(source / episode["split"] / f"episode_{i:07d}.npz")
            for i in range(episode["start"], episode["end"] + 1)
        ]
        for key in KEYS:
            arrays[f"episode_{number}/{key}"] = np.stack([frame[key] for frame in frames])
        episodes.append(
            {
                "name": f"episode_{number}",
                "split": episode["split"],
                "first_frame": episode["start"],
                "initial_condition": episode["initial_condition"],
                # Frame windows relative to the episode's first frame, with the task the oracle confirmed.
                "primitives": [
                    {"task": p["intended"], "frames": [f - episode["start"] for f in p["frames"]]}
                    for p in episode["primitives"]
                ],
            }
        )
    first = report["episodes"][0]
    frame = np.load(source / first["split"] / f"episode_{first['start']:07d}.npz")
    arrays["episode_0/first_rgb_static"] = frame["rgb_static"]
    arrays["episode_0/first_rgb_gripper"] = frame["rgb_gripper"]
    np.savez_compressed(target / "recorded_episodes.npz", **arrays)
    (target / "recorded_episodes.json").write_text(json.dumps({"episodes": episodes}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
