"""End to end through LeRobot's own CLIs, offline on the CPU, with the tiny preset:

* real CALVIN frames -> LeRobotDataset (our converter) -> ``lerobot-train`` a few hundred steps with the loss
  going down -> checkpoint -> ``DeFIPolicy.from_pretrained`` -> ``select_action`` through the saved processors;
* PushT-shaped data recorded from the real gym_pusht env -> ``lerobot-train`` -> ``lerobot-eval --env.type=pusht``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from defi_test_utils import REPO_DIR

from lerobot_defi.policy.modeling_defi import DeFIPolicy

BIN = Path(sys.executable).parent
TINY = REPO_DIR / "configs" / "defi_tiny.yaml"
pytestmark = pytest.mark.slow


def run_cli(args: list[str], cwd: Path, expect_failure: bool = False) -> str:
    # One torch thread per process (torchrun gives its ranks one anyway): on a machine busy with other jobs,
    # spinning OpenMP threads make these runs ~3-10x slower instead of in proportion to the load.
    env = {
        "OMP_NUM_THREADS": "1",
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_LEROBOT_HOME": str(cwd / "lerobot_home"),
        "WANDB_MODE": "disabled",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    if (result.returncode != 0) != expect_failure:
        raise AssertionError(f"{' '.join(args[:2])} exited with {result.returncode}:\n{output[-6000:]}")
    return output


def logged_losses(output: str) -> list[float]:
    return [float(v) for v in re.findall(r"step:\S+ .*? loss:([0-9.]+)", output)]


def test_train_on_real_calvin_frames_then_load_and_act(tmp_path, calvin_slice):
    from lerobot_defi.conversions.calvin import convert_calvin

    root = convert_calvin(calvin_slice / "training", "local/calvin_slice", root=tmp_path / "dataset")
    output = run_cli(
        [
            str(BIN / "lerobot-train"),
            f"--config_path={TINY}",
            "--dataset.repo_id=local/calvin_slice",
            f"--dataset.root={root}",
            f"--output_dir={tmp_path / 'run'}",
            "--steps=150",
            "--log_freq=25",
            "--save_freq=150",
            "--dataset.video_backend=pyav",
        ],
        tmp_path,
    )
    losses = logged_losses(output)
    assert len(losses) == 6, output[-3000:]
    assert all(np.isfinite(losses))
    # 150 steps on the 2-core CPU: 1.39 at step 25, 0.52 over the last two logs (0.38 of the first).
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses

    checkpoint = tmp_path / "run" / "checkpoints" / "000150" / "pretrained_model"
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (checkpoint / name).is_file(), name
    policy = DeFIPolicy.from_pretrained(checkpoint)
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    pre, post = make_pre_post_processors(
        PreTrainedConfig.from_pretrained(checkpoint), pretrained_path=checkpoint
    )
    frame = np.load(next(iter(sorted((calvin_slice / "training").glob("episode_*.npz")))))
    observation = {
        "observation.images.static": torch.from_numpy(frame["rgb_static"]).permute(2, 0, 1).float() / 255,
        "observation.images.gripper": torch.from_numpy(frame["rgb_gripper"]).permute(2, 0, 1).float() / 255,
        "observation.state": torch.from_numpy(frame["robot_obs"]).float(),
        "task": "open the drawer",
    }
    action = post(policy.select_action(pre(observation)))
    assert action.shape == (1, 7) and torch.isfinite(action).all()
    assert action[0, -1].item() in (-1.0, 1.0)  # gripper binarised by the saved postprocessor


def record_pusht_dataset(root: Path, episodes: int = 2, steps: int = 30) -> None:
    """A small LeRobotDataset recorded from the real gym_pusht env with a scripted wandering agent."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("gym_pusht", reason="lerobot[pusht] is needed for the PushT test")
    from lerobot.datasets import LeRobotDataset

    env = gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos", render_mode="rgb_array")
    features = {
        "observation.image": {
            "dtype": "video",
            "shape": (96, 96, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    dataset = LeRobotDataset.create(
        "local/pusht_recorded", fps=10, features=features, root=root, use_videos=True
    )
    rng = np.random.default_rng(0)
    for episode in range(episodes):
        observation, _ = env.reset(seed=episode)
        for t in range(steps):
            if t % 10 == 0:
                target = rng.uniform(100, 400, size=2)
            action = observation["agent_pos"] + np.clip(target - observation["agent_pos"], -30, 30)
            dataset.add_frame(
                {
                    "observation.image": observation["pixels"],
                    "observation.state": observation["agent_pos"].astype(np.float32),
                    "action": action.astype(np.float32),
                    "task": "Push the T-shaped block onto the T-shaped target.",
                }
            )
            observation, *_ = env.step(action)
        dataset.save_episode()
    dataset.finalize()
    env.close()


def test_lerobot_eval_pusht_runs_tiny_defi(tmp_path):
    record_pusht_dataset(tmp_path / "pusht")
    output = run_cli(
        [
            str(BIN / "lerobot-train"),
            f"--config_path={TINY}",
            "--dataset.repo_id=local/pusht_recorded",
            f"--dataset.root={tmp_path / 'pusht'}",
            f"--output_dir={tmp_path / 'run'}",
            "--steps=10",
            "--log_freq=5",
            "--save_freq=10",
            "--dataset.video_backend=pyav",
        ],
        tmp_path,
    )
    # What the sampler can start from is said at the start (2 episodes of 30 frames, the tiny preset's 9 dropped).
    assert "drop_n_last_frames=9: training samples start from 42 of 60 frames (70%) of 2 episodes" in output
    checkpoint = tmp_path / "run" / "checkpoints" / "last" / "pretrained_model"
    # PushT's actions are positions: the default decides from the data not to binarise the last one.
    assert json.loads((checkpoint / "config.json").read_text())["binarize_gripper"] is False
    run_cli(
        [
            str(BIN / "lerobot-eval"),
            f"--policy.path={checkpoint}",
            "--env.type=pusht",
            "--env.episode_length=20",
            "--eval.n_episodes=2",
            "--eval.batch_size=2",
            "--eval.use_async_envs=false",
            "--policy.device=cpu",
            f"--output_dir={tmp_path / 'eval'}",
        ],
        tmp_path,
    )
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    overall = info["overall"]
    assert overall["n_episodes"] == 2
    assert len(overall["video_paths"]) == 2 and all(Path(p).is_file() for p in overall["video_paths"])
    assert np.isfinite(overall["avg_sum_reward"])


def test_lerobot_train_stops_clearly_when_no_frame_can_be_sampled(tmp_path):
    """Episodes of 8 frames with the tiny preset's drop_n_last_frames=9: LeRobot's sampler would have nothing to
    start from; training stops before building the policy's networks, saying why and what to pass."""
    record_pusht_dataset(tmp_path / "pusht", episodes=2, steps=8)
    output = run_cli(
        [
            str(BIN / "lerobot-train"),
            f"--config_path={TINY}",
            "--dataset.repo_id=local/pusht_recorded",
            f"--dataset.root={tmp_path / 'pusht'}",
            f"--output_dir={tmp_path / 'run'}",
            "--steps=2",
            "--dataset.video_backend=pyav",
        ],
        tmp_path,
        expect_failure=True,
    )
    assert (
        "UnsampleableDataError: --policy.drop_n_last_frames=9 leaves no frame to train on for the whole dataset "
        "(2 episode(s) of 8 frames)"
    ) in output
    assert "--policy.drop_n_last_frames=7" in output and not (tmp_path / "run" / "checkpoints").exists()


def test_two_process_ddp_training_on_cpu(tmp_path):
    """`torchrun --nproc_per_node=2 lerobot-train` (DDP over gloo): both ranks train, rank 0 alone checkpoints."""
    record_pusht_dataset(tmp_path / "pusht", episodes=2, steps=20)
    output = run_cli(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(BIN / "lerobot-train"),
            f"--config_path={TINY}",
            "--dataset.repo_id=local/pusht_recorded",
            f"--dataset.root={tmp_path / 'pusht'}",
            f"--output_dir={tmp_path / 'run'}",
            "--steps=4",
            "--log_freq=2",
            "--save_freq=4",
            "--batch_size=2",
            "--policy.binarize_gripper=false",
            "--dataset.video_backend=pyav",
        ],
        tmp_path,
    )
    assert "Effective batch size: 2 x 2 = 4" in output
    assert len(logged_losses(output)) == 2  # logged once (main process), not once per rank
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["000004", "last"]
    DeFIPolicy.from_pretrained(tmp_path / "run" / "checkpoints" / "last" / "pretrained_model")


def test_demo_command_runs_end_to_end(tmp_path):
    """The README's demo, as a user runs it (a fresh process: nothing imported beforehand)."""
    output = run_cli(
        [str(BIN / "lerobot-defi-demo"), f"--output_dir={tmp_path / 'demo'}", "--steps=20"], REPO_DIR
    )
    assert "[1/3] converted" in output and "[3/3] loaded" in output
    # Quiet and honest: one line names the video decoder and why, no loader tracebacks, no encoder banners.
    assert len(re.findall(r"^      video decoding: (torchcodec|pyav) \(.+\)$", output, flags=re.M)) == 1
    assert "Traceback" not in output and "libtorchcodec" not in output and "Svt[" not in output
    assert "lerobot-train: 100%" in output and "20/20" in output  # the training progress bar
    assert (
        tmp_path / "demo" / "train" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"
    ).is_file()
