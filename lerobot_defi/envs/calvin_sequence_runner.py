"""Playing CALVIN evaluation sequences for ``calvin_benchmark.py``: one sequence with a policy agent
(:func:`run_sequence`), and many in this process or in spawned worker processes, one simulator and one policy
copy per worker (:func:`run_in_process`, :func:`run_in_workers`; results come back in completion order)."""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from lerobot.utils.import_utils import register_third_party_plugins
from lerobot.utils.random_utils import set_seed

from lerobot_defi.envs.calvin import SEQUENCE_INDEX_OPTION, CalvinEnv
from lerobot_defi.envs.calvin_benchmark_config import CalvinBenchmarkConfig
from lerobot_defi.envs.calvin_video import SequenceVideoWriter

VIDEOS_DIR = "videos"


@dataclass
class SequenceResult:
    """What one sequence gave: tasks solved in a row, steps spent per attempted task, timings."""

    index: int
    tasks: list[str]
    completed: int
    subtask_steps: list[int]
    env_steps: int
    sim_seconds: float
    policy_seconds: float
    video: str | None = None


def run_sequence(env: CalvinEnv, agent, index: int, video_path: Path | None = None) -> SequenceResult:
    """Play sequence ``index`` to its end; ``agent`` has ``reset()`` and ``act(observation, instruction)``."""
    observation, info = env.reset(options={SEQUENCE_INDEX_OPTION: index})
    agent.reset()
    writer = SequenceVideoWriter(video_path, fps=env.metadata["render_fps"]) if video_path else None
    subtask_steps, steps_in_task, env_steps = [], 0, 0
    sim_seconds = policy_seconds = 0.0
    try:
        if writer:
            writer.add(observation, f"1/{env.subtasks_per_episode} {env.task_description}")
        while True:
            caption = f"{info['completed_subtasks'] + 1}/{env.subtasks_per_episode} {env.task_description}"
            start = time.perf_counter()
            action = agent.act(observation, env.task_description)
            stepped = time.perf_counter()
            observation, _, terminated, truncated, info = env.step(action)
            sim_seconds += time.perf_counter() - stepped
            policy_seconds += stepped - start
            env_steps += 1
            steps_in_task += 1
            task_ended = info["subtask_success"] or truncated
            if task_ended:
                subtask_steps.append(steps_in_task)
                steps_in_task = 0
            if writer:
                writer.add(observation, caption, outcome=info["subtask_success"] if task_ended else None)
            if terminated or truncated:
                break
            if info["subtask_success"]:
                agent.reset()  # a new instruction starts from a fresh policy state, as in CALVIN's protocol
    finally:
        if writer:
            writer.close()
    return SequenceResult(
        index=index,
        tasks=list(env.sequence.tasks),
        completed=info["completed_subtasks"],
        subtask_steps=subtask_steps,
        env_steps=env_steps,
        sim_seconds=sim_seconds,
        policy_seconds=policy_seconds,
        video=str(video_path) if video_path else None,
    )


# ---- workers ---------------------------------------------------------------------------------------


def worker_device(cfg: CalvinBenchmarkConfig, worker_id: int) -> tuple[str | None, int | None]:
    """(policy device, CUDA index for EGL) of worker ``worker_id``; bare 'cuda' spreads workers over GPUs."""
    device = cfg.policy.device
    if not device or not device.startswith("cuda") or not torch.cuda.is_available():
        return device, None
    if device == "cuda":
        index = worker_id % torch.cuda.device_count()
        return f"cuda:{index}", index
    return device, torch.device(device).index or 0


def build_worker(cfg: CalvinBenchmarkConfig, worker_id: int):
    from lerobot_defi.envs.policy_agent import build_policy_agent

    policy_cfg = copy.deepcopy(cfg.policy)
    policy_cfg.device, cuda_index = worker_device(cfg, worker_id)
    env_cfg = cfg.env_config()
    agent = build_policy_agent(policy_cfg, env_cfg, cfg.rename_map)
    env = CalvinEnv(**env_cfg.gym_kwargs, cuda_device_index=cuda_index)
    return env, agent


def video_path(cfg: CalvinBenchmarkConfig, index: int) -> Path | None:
    return (
        Path(cfg.output_dir) / VIDEOS_DIR / f"sequence_{index:04d}.mp4"
        if index in cfg.video_sequences
        else None
    )


def evaluate_one(cfg: CalvinBenchmarkConfig, env, agent, index: int) -> SequenceResult:
    set_seed(cfg.seed + index)
    return run_sequence(env, agent, index, video_path(cfg, index))


def worker_main(cfg: CalvinBenchmarkConfig, worker_id: int, tasks: mp.Queue, results: mp.Queue) -> None:
    """Process entry: evaluate the sequence indices taken from ``tasks`` until a ``None``."""
    try:
        register_third_party_plugins()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.num_workers))
        env, agent = build_worker(cfg, worker_id)
        try:
            while (index := tasks.get()) is not None:
                results.put(("result", dataclasses.asdict(evaluate_one(cfg, env, agent, index))))
        finally:
            env.close()
    except BaseException:
        results.put(("error", f"worker {worker_id}:\n{traceback.format_exc()}"))


def run_in_process(cfg: CalvinBenchmarkConfig, todo: list[int]):
    env, agent = build_worker(cfg, 0)
    try:
        for index in todo:
            yield evaluate_one(cfg, env, agent, index)
    finally:
        env.close()


def run_in_workers(cfg: CalvinBenchmarkConfig, todo: list[int]):
    context = mp.get_context("spawn")  # fork is unsafe with torch threads, CUDA and EGL
    tasks, results = context.Queue(), context.Queue()
    for index in todo:
        tasks.put(index)
    workers = [
        context.Process(target=worker_main, args=(cfg, k, tasks, results), daemon=True)
        for k in range(min(cfg.num_workers, len(todo)))
    ]
    for worker in workers:
        tasks.put(None)
        worker.start()
    try:
        for _ in todo:
            while True:
                try:
                    kind, payload = results.get(timeout=5.0)
                    break
                except queue.Empty:
                    dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
                    if dead:
                        raise RuntimeError(
                            f"a CALVIN evaluation worker died (exit code {dead[0].exitcode}) without a report"
                        ) from None
            if kind == "error":
                raise RuntimeError(f"a CALVIN evaluation worker failed, {payload}")
            yield SequenceResult(**payload)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=10)
