"""Speed of the CALVIN env (real calvin_env): build, reset and step rates per renderer.

    python benchmarks/bench_calvin_env.py --steps=200 --renderers='[egl,tiny]'

Prints, per renderer: simulator build time (first reset), mean reset time over the first
sequences, and env steps/s with uniformly random actions (no policy). Needs calvin_env installed.
"""

import time
from dataclasses import dataclass, field
from typing import Literal

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.envs.calvin import CalvinEnv
from lerobot_defi.envs.calvin_simulator import CALVIN_ENV_INSTALL_HINT, calvin_env_available


def measure(renderer: str, steps: int, resets: int) -> dict:
    env = CalvinEnv(episode_length=steps, renderer=renderer)
    env.action_space.seed(0)
    start = time.perf_counter()
    env.reset(options={"sequence_index": 0})
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(1, resets + 1):
        env.reset(options={"sequence_index": index})
    reset_seconds = (time.perf_counter() - start) / resets
    start = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
    steps_per_second = steps / (time.perf_counter() - start)
    env.close()
    return {"build_s": build_seconds, "reset_s": reset_seconds, "steps_per_s": steps_per_second}


Renderer = Literal["auto", "egl", "tiny"]


@dataclass
class BenchCalvinEnvConfig:
    """Speed of the CALVIN env (real calvin_env): build, reset and step rates per renderer."""

    # Env steps timed per renderer (uniformly random actions); also the episode length.
    steps: int = 200
    # Resets timed after the first one (the first reset builds the simulator and is timed on its own).
    resets: int = 5
    # Renderers to measure, one after the other.
    renderers: list[Renderer] = field(default_factory=lambda: ["egl", "tiny"])


def main() -> None:
    args = parse_or_exit(BenchCalvinEnvConfig)
    if not calvin_env_available():
        raise SystemExit(CALVIN_ENV_INSTALL_HINT)
    rows = [(renderer, measure(renderer, args.steps, args.resets)) for renderer in args.renderers]
    print(f"{'renderer':<8} {'build s':>8} {'reset s':>8} {'steps/s':>8}   ({args.steps} random steps)")
    for renderer, row in rows:
        print(f"{renderer:<8} {row['build_s']:>8.2f} {row['reset_s']:>8.3f} {row['steps_per_s']:>8.1f}")


if __name__ == "__main__":
    main()
