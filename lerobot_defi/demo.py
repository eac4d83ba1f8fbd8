"""``lerobot-defi-demo``: the whole DeFI policy workflow on bundled real CALVIN frames, offline, on a CPU.

1. convert the bundled CALVIN slice (``tests/data/calvin_mini_slice``, recorded from the real simulator) into a
   LeRobotDataset with the CALVIN converter;
2. train the tiny DeFI preset (``configs/defi_tiny.yaml``: the full architecture with small random networks)
   with LeRobot's own ``lerobot-train``;
3. load the checkpoint with ``DeFIPolicy.from_pretrained`` and the saved processors, and act on a real frame.

It prints what it did and where the outputs are (``--output_dir``, default ``outputs/defi_demo``), with a
progress bar while ``lerobot-train`` runs (its full log goes to ``train.log``).

Threads: on a machine busy with other jobs, torch's spinning OpenMP threads slow the tiny networks down
tenfold instead of in proportion to the load (2 cores at load 4-5: 1.6-5.2 s per update with 2 threads,
0.65-1.1 s with 1; idle, 2 threads save about a third), so ``lerobot-train`` runs with one torch thread
(``OMP_NUM_THREADS=1``) unless ``OMP_NUM_THREADS`` is set. The tiny preset reads data in the training process
(``num_workers: 0``: no data-loader workers multiplying the threads).

Options in LeRobot's dialect (``lerobot_defi.command_line``): ``--raw_dir``, ``--output_dir``, ``--steps``.
"""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lerobot_defi.command_line import CommandLineError, parse_command_line

DEFAULT_RAW = Path("tests/data/calvin_mini_slice/training")
TRAINING_BAR = re.compile(r"Training:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


@dataclass
class DemoConfig:
    """lerobot-defi-demo: convert the bundled CALVIN slice, train the tiny DeFI preset with lerobot-train, load
    the checkpoint and act on a real frame (offline, CPU). Example: lerobot-defi-demo --steps=20"""

    # A CALVIN split folder of episode_*.npz files (default: the bundled tests/data/calvin_mini_slice/training).
    raw_dir: Path | None = None
    # Where the dataset, the training run and train.log are written (replaced if it exists).
    output_dir: Path = Path("outputs/defi_demo")
    # lerobot-train steps.
    steps: int = 200

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def training_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the demo's ``lerobot-train``: offline, and one torch (OpenMP / MKL) thread unless the
    user chose a number (see the module docstring)."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    threads = env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", threads)
    return env


def run_with_progress(command: list[str], log_path: Path, steps: int, env: dict[str, str]) -> int:
    """Run ``command`` with its output in ``log_path``; a progress bar follows lerobot-train's own bar there."""
    from tqdm import tqdm

    with open(log_path, "w") as log, tqdm(total=steps, desc="      lerobot-train", unit="step") as bar:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            time.sleep(0.5)
            done = TRAINING_BAR.findall(log_path.read_text(errors="replace")[-4000:])
            if done:
                bar.update(int(done[-1][0]) - bar.n)
        if process.returncode == 0:
            bar.update(steps - bar.n)
    return process.returncode


def _find_default_raw() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / DEFAULT_RAW).is_dir():
            return base / DEFAULT_RAW
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_command_line(DemoConfig, argv, prog="lerobot-defi-demo")
    except CommandLineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from lerobot_defi.conversions.calvin import convert_calvin
    from lerobot_defi.conversions.video_backend import describe_video_backend, video_backend
    from lerobot_defi.policy.modeling_defi import DeFIPolicy
    from lerobot_defi.presets import preset_path

    raw = Path(args.raw_dir) if args.raw_dir is not None else _find_default_raw()
    if raw is None or not raw.is_dir():
        where = raw if raw is not None else f"{DEFAULT_RAW} from the repository root"
        print(
            f"error: no CALVIN split folder found (looked for {where}); pass --raw_dir=<split folder>",
            file=sys.stderr,
        )
        return 2
    out = Path(args.output_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    t0 = time.perf_counter()
    dataset_root = convert_calvin(raw, "local/defi_demo_calvin", root=out / "dataset")
    print(f"[1/3] converted {raw} -> LeRobotDataset at {dataset_root} ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    backend, _ = video_backend()
    command = [
        str(Path(sys.executable).parent / "lerobot-train"),
        f"--config_path={preset_path('defi_tiny.yaml')}",
        "--dataset.repo_id=local/defi_demo_calvin",
        f"--dataset.root={dataset_root}",
        f"--output_dir={out / 'train'}",
        f"--steps={args.steps}",
        f"--save_freq={args.steps}",
        f"--log_freq={max(1, args.steps // 5)}",
        f"--dataset.video_backend={backend}",
    ]
    env = training_env()
    print("[2/3] " + " ".join(command))
    print(f"      {describe_video_backend()}")
    print(f"      torch threads: {env['OMP_NUM_THREADS']} (OMP_NUM_THREADS); full log in {out / 'train.log'}")
    returncode = run_with_progress(command, out / "train.log", args.steps, env)
    log = (out / "train.log").read_text(errors="replace")
    if returncode != 0:
        print(log[-4000:], file=sys.stderr)
        return returncode
    losses = re.findall(r"step:(\S+) .*? loss:([0-9.]+)", log)
    print(
        f"      trained {args.steps} steps in {time.perf_counter() - t0:.1f} s; loss by step: "
        + ", ".join(f"{s} -> {float(v):.3f}" for s, v in losses)
    )

    checkpoint = out / "train" / "checkpoints" / "last" / "pretrained_model"
    with contextlib.redirect_stdout(io.StringIO()):  # LeRobot prints "Loading weights from local directory"
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
