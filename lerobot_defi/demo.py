"""``lerobot-defi-demo``: the whole DeFI policy workflow on bundled real CALVIN frames, offline, on a CPU.

1. convert the bundled CALVIN slice (``tests/data/calvin_mini_slice``, recorded from the real simulator) into a
   LeRobotDataset with the CALVIN converter;
2. train the tiny DeFI preset (``configs/defi_tiny.yaml``: the full architecture with small random networks)
   with LeRobot's own ``lerobot-train``;
3. load the checkpoint with ``DeFIPolicy.from_pretrained`` and the saved processors, and act on a real frame.

It prints what it did and where the outputs are (``--output-dir``, default ``outputs/defi_demo``).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RAW = Path("tests/data/calvin_mini_slice/training")


def _find_default_raw() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / DEFAULT_RAW).is_dir():
            return base / DEFAULT_RAW
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--raw-dir", type=Path, default=None, help="a CALVIN split folder (default: the bundled slice)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/defi_demo"))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from lerobot_defi.conversions.calvin import convert_calvin
    from lerobot_defi.policy.modeling_defi import DeFIPolicy
    from lerobot_defi.presets import preset_path

    raw = args.raw_dir or _find_default_raw()
    if raw is None or not raw.is_dir():
        parser.error(
            f"no CALVIN split folder found (looked for {DEFAULT_RAW} from the repository root); pass --raw-dir"
        )
    out = args.output_dir.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    t0 = time.perf_counter()
    dataset_root = convert_calvin(raw, "local/defi_demo_calvin", root=out / "dataset")
    print(f"[1/3] converted {raw} -> LeRobotDataset at {dataset_root} ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    command = [
        str(Path(sys.executable).parent / "lerobot-train"),
        f"--config_path={preset_path('defi_tiny.yaml')}",
        "--dataset.repo_id=local/defi_demo_calvin",
        f"--dataset.root={dataset_root}",
        f"--output_dir={out / 'train'}",
        f"--steps={args.steps}",
        f"--save_freq={args.steps}",
        f"--log_freq={max(1, args.steps // 5)}",
        "--dataset.video_backend=pyav",
    ]
    print("[2/3] " + " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    log = result.stdout + result.stderr
    (out / "train.log").write_text(log)
    if result.returncode != 0:
        print(log[-4000:], file=sys.stderr)
        return result.returncode
    losses = re.findall(r"step:(\S+) .*? loss:([0-9.]+)", log)
    print(
        f"      trained {args.steps} steps in {time.perf_counter() - t0:.1f} s; loss by step: "
        + ", ".join(f"{s} -> {float(v):.3f}" for s, v in losses)
    )

    checkpoint = out / "train" / "checkpoints" / "last" / "pretrained_model"
    policy = DeFIPolicy.from_pretrained(checkpoint)
    pre, post = make_pre_post_processors(
        PreTrainedConfig.from_pretrained(checkpoint), pretrained_path=checkpoint
    )
    frame = np.load(sorted(raw.glob("episode_*.npz"))[0])
    observation = {
        "observation.images.static": torch.from_numpy(frame["rgb_static"]).permute(2, 0, 1).float() / 255,
        "observation.images.gripper": torch.from_numpy(frame["rgb_gripper"]).permute(2, 0, 1).float() / 255,
        "observation.state": torch.from_numpy(frame["robot_obs"]).float(),
        "task": "open the drawer",
    }
    with torch.no_grad():
        action = post(policy.select_action(pre(observation)))
    trainable = sum(p.numel() for p in policy.get_optim_params())
    print(
        f"[3/3] loaded {checkpoint} ({trainable / 1e3:.0f} k trainable parameters); action for a real frame and "
        f"'open the drawer': {[round(float(v), 3) for v in action[0]]}"
    )
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
