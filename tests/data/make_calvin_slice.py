"""Rebuild ``tests/data/calvin_mini_slice`` from the real recording ``../shared/data/calvin_mini``.

Keeps the two shortest language windows of ``training/`` (48 frames each: ``turn_on_led`` in play episode 0,
``push_red_block_left`` in play episode 1) with their frames, and writes the index files of a CALVIN split
folder for exactly those frames. Depth arrays are dropped from every frame but the first (size), the tactile
arrays are absent in the recording anyway. Run from the repository root:

    python tests/data/make_calvin_slice.py ../shared/data/calvin_mini
"""

import shutil
import sys
from pathlib import Path

import numpy as np

WINDOWS = [3, 6]  # indices into training/lang_annotations/auto_lang_ann.npy


def main(source: Path, target: Path) -> None:
    src, dst = source / "training", target / "training"
    if target.exists():
        shutil.rmtree(target)
    (dst / "lang_annotations").mkdir(parents=True)
    annotations = np.load(src / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
    windows = [annotations["info"]["indx"][i] for i in WINDOWS]
    kept = {
        "info": {"indx": windows, "episodes": []},
        "language": {
            "ann": [annotations["language"]["ann"][i] for i in WINDOWS],
            "task": [annotations["language"]["task"][i] for i in WINDOWS],
            "emb": annotations["language"]["emb"][WINDOWS],
        },
    }
    np.save(dst / "lang_annotations" / "auto_lang_ann.npy", kept, allow_pickle=True)
    # Windows are frames start .. end-1 (calvin_mini/README.md); each becomes a play segment of the slice.
    segments = np.array([[start, end - 1] for start, end in windows], dtype=np.int64)
    np.save(dst / "ep_start_end_ids.npy", segments)
    np.save(dst / "ep_lens.npy", segments[:, 1] - segments[:, 0] + 1)
    np.save(
        dst / "scene_info.npy", np.load(src / "scene_info.npy", allow_pickle=True).item(), allow_pickle=True
    )
    shutil.copy(src / "statistics.yaml", dst / "statistics.yaml")
    shutil.copytree(src / ".hydra", dst / ".hydra")
    first = True
    for start, end in segments:
        for index in range(start, end + 1):
            frame = dict(np.load(src / f"episode_{index:07d}.npz"))
            if not first:
                frame = {k: v for k, v in frame.items() if not k.startswith("depth_")}
            first = False
            np.savez_compressed(dst / f"episode_{index:07d}.npz", **frame)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent / "calvin_mini_slice")
