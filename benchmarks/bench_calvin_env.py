"""Speed of the CALVIN env (real calvin_env): build, reset and step rates per renderer.

    python benchmarks/bench_calvin_env.py --steps 200 --renderers egl tiny

Prints, per renderer: simulator build time (first reset), mean reset time over the first
sequences, and env steps/s with uniformly random actions (no policy). Needs calvin_env installed.
"""

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resets", type=int, default=5)
    parser.add_argument("--renderers", nargs="+", default=["egl", "tiny"], choices=["auto", "egl", "tiny"])
    args = parser.parse_args()
    if not calvin_env_available():
        raise SystemExit(CALVIN_ENV_INSTALL_HINT)
    rows = [(renderer, measure(renderer, args.steps, args.resets)) for renderer in args.renderers]
    print(f"{'renderer':<8} {'build s':>8} {'reset s':>8} {'steps/s':>8}   ({args.steps} random steps)")
    for renderer, row in rows:
        print(f"{renderer:<8} {row['build_s']:>8.2f} {row['reset_s']:>8.3f} {row['steps_per_s']:>8.1f}")


if __name__ == "__main__":
    main()
