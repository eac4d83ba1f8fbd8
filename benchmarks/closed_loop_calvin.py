"""Does DeFI learn? Closed-loop success in the real CALVIN simulator, against LeRobot's diffusion policy and ACT.

One command records (or reuses) demonstrations of the scripted expert with ``lerobot-defi-record-calvin``, trains
four policies on them with ``lerobot-train`` and evaluates every checkpoint with ``lerobot-eval --env.type=calvin
--env.tasks=...`` (single-task episodes from held-out seeds), then writes ``results.json`` and ``results.png``
(success vs training steps) into ``--output_dir``:

* ``defi``: the full three-stage recipe: Stage 1 ``lerobot-defi-train-gfdm`` on the recorded videos, starting from
  an SVD-shaped stand-in; Stage 2 ``lerobot-defi-train-gidm``; then the policy on top of both;
* ``defi_no_pretraining``: the same policy with the untrained stand-in GFDM (frozen, random) and a GIDM from scratch;
* ``diffusion`` and ``act``: LeRobot's policies with their default settings, no pretrained backbone weights.

Pretrained networks cannot be downloaded here, so DeFI's (SVD, CLIP text, T5, DINOv2) are replaced by seeded random
stand-ins of ``configs/calvin_small_components.yaml``, saved as folders in the pretrained layouts and passed by
path exactly where a user passes the real ones. All policies get the same cameras, both resized to
``camera_size`` x ``camera_size`` (LeRobot's diffusion policy needs cameras of one shape; CALVIN's are 200x200 and
84x84); ``diffusion`` and ``act`` also get the robot state (``observation.state``), DeFI uses images and the
instruction only (its design); nobody gets the scene state. The same dataset, number of training samples
(``steps`` x ``batch_size``) and GPU for every policy.

Every stage is resumable: a finished stage is recorded in ``<output_dir>/stages.json`` and skipped on the next run;
logs are in ``<output_dir>/logs/``. ``--dry_run=true`` prints the commands.

    python benchmarks/closed_loop_calvin.py --output_dir=outputs/closed_loop_calvin --device=cuda
    python benchmarks/closed_loop_calvin.py --size=tiny --device=cpu ...   # CPU smoke run (mechanics only)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lerobot_defi.command_line import parse_or_exit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's own modules beside this script
from closed_loop_components import component_configs, write_stand_in_components
from closed_loop_results import load_results, machine_description, merge_results, plot_results, summarize_eval

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BENCHMARK_TASKS = [
    "open_drawer",
    "close_drawer",
    "move_slider_left",
    "move_slider_right",
    "turn_on_led",
    "turn_off_led",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "push_red_block_left",
    "push_blue_block_right",
    "push_pink_block_left",
    "lift_red_block_table",
    "lift_blue_block_table",
    "lift_pink_block_table",
    "rotate_red_block_right",
    "rotate_blue_block_left",
]
POLICIES = {
    "defi": "DeFI, three stages: GFDM (Stage 1) and GIDM (Stage 2) pretrained on the recorded videos, then the policy",
    "defi_no_pretraining": "DeFI without Stages 1-2: untrained frozen GFDM stand-in, GIDM from scratch",
    "diffusion": "LeRobot diffusion policy, defaults, ResNet-18 from scratch (no ImageNet weights)",
    "act": "LeRobot ACT, defaults, ResNet-18 from scratch (no ImageNet weights)",
}
STAGES_FILE = "stages.json"
RESULTS_FILE = "results.json"
PLOT_FILE = "results.png"


@dataclass
class SizeConfig:
    """How big everything is: ``small`` trains on one GPU in minutes, ``tiny`` is a CPU smoke run."""

    defi_preset: str = "defi_calvin_small.yaml"
    gfdm_preset: str = "gfdm_calvin_small.yaml"
    gidm_preset: str = "gidm_calvin_small.yaml"
    components: str = "calvin_small_components.yaml"
    # Extra command-line options per stage (e.g. smaller networks for diffusion/act in the tiny size).
    extra: dict[str, list[str]] = field(default_factory=dict)


SIZES = {
    "small": SizeConfig(),
    "tiny": SizeConfig(
        defi_preset="defi_tiny.yaml",
        gfdm_preset="gfdm_tiny.yaml",
        gidm_preset="gidm_tiny.yaml",
        components="tiny",
        extra={
            # The GIDM encoder at the original's 1e-4: at the tiny preset's 3e-3 Stage 3 collapses a pretrained
            # GIDM's codes within ~100 steps (docs/training.md#s4).
            "defi": ["--policy.image_size=64", "--policy.gfdm_num_frames=4", "--policy.gidm_frame_indices=[0,2]",
                     "--policy.gidm_lr=0.0001"],
            "diffusion": ["--policy.down_dims=[32,64]", "--policy.horizon=16", "--policy.n_action_steps=8"],
            "act": ["--policy.dim_model=64", "--policy.dim_feedforward=128", "--policy.chunk_size=10",
                    "--policy.n_action_steps=10"],
            "gfdm": ["--image_size=64", "--num_frames=4"],
            "gidm": [],
        },
    ),
}  # fmt: skip


@dataclass
class BenchmarkConfig:
    output_dir: str = "outputs/closed_loop_calvin"
    # A dataset recorded by lerobot-defi-record-calvin to reuse (default: record into <output_dir>/dataset).
    dataset_root: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(BENCHMARK_TASKS))
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    size: str = "small"
    # Recording.
    episodes_per_task: int = 30
    camera_size: int = 96
    # TinyRenderer renders identically on any machine (EGL images depend on the GPU/driver): record and evaluate
    # with the same renderer.
    renderer: str = "tiny"
    perturbation_probability: float = 0.03
    record_workers: int = 2
    record_seed: int = 0
    # Training (the same for every policy).
    steps: int = 3000
    batch_size: int = 64
    # Frames a training sample may not start from, at the end of each episode, for every policy: LeRobot's ACT
    # has no such setting (it starts samples everywhere), so 0 gives every policy the same frames.
    drop_n_last_frames: int = 0
    # Learning-rate warm-up of the policies that have one (DeFI, diffusion), as a fraction of the steps; ACT trains
    # at a constant rate without warm-up (its preset).
    warmup_fraction: float = 0.05
    # Checkpoints evaluated for the success-vs-steps curve: every steps / curve_points steps.
    curve_points: int = 3
    train_workers: int = 4
    pretrain_steps: int = 1500
    seed: int = 1000
    device: str = "cuda"
    # Evaluation: final checkpoints with eval_episodes_per_task episodes per task, earlier ones with
    # curve_episodes_per_task; seeds start at eval_seed (the recorder's seed stream is separate).
    eval_episodes_per_task: int = 20
    curve_episodes_per_task: int = 5
    episode_length: int = 120
    # "dataset": each task is given its sentence that the most recorded episodes carry (the stand-in text encoders
    # are random, so no policy can generalise to words it never saw); "training": each task's first CALVIN
    # training sentence (which the recorder may never have drawn); "evaluation": CALVIN's held-out sentences.
    instructions: str = "dataset"
    eval_batch_size: int = 10
    eval_seed: int = 100_000
    # Jobs at a time: trainings share the GPU, evaluations share the CPU cores (simulators).
    max_parallel_training: int = 4
    max_parallel_eval: int = 2
    dry_run: bool = False
    # Merge the results.json of parts run on different machines (e.g. one part per session) into
    # <output_dir>/results.json and results.png instead of running anything.
    merge: list[str] | None = None

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
        if self.steps < self.curve_points or self.curve_points < 1:
            raise ValueError("need steps >= curve_points >= 1")
        if self.instructions not in ("dataset", "training", "evaluation"):
            raise ValueError(
                f"instructions must be dataset, training or evaluation, got {self.instructions!r}"
            )
        if not 0 <= self.warmup_fraction < 1 or self.drop_n_last_frames < 0:
            raise ValueError("need 0 <= warmup_fraction < 1 and drop_n_last_frames >= 0")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.steps)


@dataclass
class Job:
    name: str
    command: list[str]
    kind: str  # "record" | "pretrain" | "train" | "eval"
    after: list[str] = field(default_factory=list)
    priority: int = 0  # lower runs first among ready jobs of a kind


class Benchmark:
    """Plans the stages as jobs with dependencies and runs them (resumably) under the concurrency limits."""

    def __init__(self, config: BenchmarkConfig):
        self.config = config
        self.size = SIZES[config.size]
        self.out = Path(config.output_dir).resolve()
        self.dataset_root = (
            Path(config.dataset_root).resolve() if config.dataset_root else self.out / "dataset"
        )
        self.components = self.out / "components"
        self.stages_path = self.out / STAGES_FILE
        self.finished: dict[str, dict] = (
            json.loads(self.stages_path.read_text()) if self.stages_path.is_file() else {}
        )

    # --- plan ------------------------------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        every = self.config.steps // self.config.curve_points
        return [every * (i + 1) for i in range(self.config.curve_points - 1)] + [self.config.steps]

    def jobs(self) -> list[Job]:
        c = self.config
        jobs = []
        if c.dataset_root is None:
            jobs.append(Job("record", self._record_command(), "record"))
        data_ready = [] if c.dataset_root else ["record"]
        if "defi" in c.policies:
            jobs.append(Job("pretrain_gfdm", self._gfdm_command(), "pretrain", after=data_ready))
            jobs.append(Job("pretrain_gidm", self._gidm_command(), "pretrain", after=data_ready))
        for policy in c.policies:
            after = list(data_ready) + (["pretrain_gfdm", "pretrain_gidm"] if policy == "defi" else [])
            jobs.append(Job(f"train_{policy}", self._train_command(policy), "train", after=after))
            for step in self.checkpoint_steps():
                final = step == c.steps
                jobs.append(
                    Job(
                        f"eval_{policy}_{step:06d}",
                        self._eval_command(policy, step, final),
                        "eval",
                        after=[f"train_{policy}"],
                        priority=0 if final else 1,
                    )
                )
        return jobs

    def _lerobot(self, script: str) -> list[str]:
        return [sys.executable, "-m", f"lerobot.scripts.{script}"]

    def _record_command(self) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "lerobot_defi.envs.calvin_recorder",
            "--repo_id=local/calvin_expert", f"--root={self.dataset_root}",
            f"--tasks=[{','.join(c.tasks)}]", f"--episodes_per_task={c.episodes_per_task}",
            f"--num_workers={c.record_workers}", f"--renderer={c.renderer}", f"--camera_size={c.camera_size}",
            f"--perturbation.probability={c.perturbation_probability}",
            f"--seed={c.record_seed}",
        ]  # fmt: skip

    def _dataset_options(self, prefix: str = "--dataset.") -> list[str]:
        return [f"{prefix}repo_id=local/calvin_expert", f"{prefix}root={self.dataset_root}"]

    def _gfdm_command(self) -> list[str]:
        c = self.config
        datasets = (
            f"[{{repo_id: local/calvin_expert, root: {self.dataset_root}, cameras: [static, gripper], "
            "camera_weights: [0.75, 0.25]}]"
        )
        return [
            sys.executable, "-m", "lerobot_defi.pretrain.train_gfdm", f"--config_path={CONFIGS / self.size.gfdm_preset}",
            f"--datasets={datasets}", f"--output_dir={self.out / 'pretrain_gfdm'}",
            f"--model.pretrained_path={self.components / 'svd_init'}",
            f"--model.clip_text_path={self.components / 'clip_text'}",
            f"--steps={c.pretrain_steps}", f"--seed={c.seed}", f"--resume={self._has_checkpoints('pretrain_gfdm')}",
            *self.size.extra.get("gfdm", []),
        ]  # fmt: skip

    def _gidm_command(self) -> list[str]:
        c = self.config
        datasets = f"[{{repo_id: local/calvin_expert, root: {self.dataset_root}, gap: 10}}]"
        return [
            sys.executable, "-m", "lerobot_defi.pretrain.train_gidm", f"--config_path={CONFIGS / self.size.gidm_preset}",
            f"--datasets={datasets}", f"--output_dir={self.out / 'pretrain_gidm'}",
            f"--dinov2_path={self.components / 'dinov2'}", f"--t5_path={self.components / 't5'}",
            f"--steps={c.pretrain_steps}", f"--seed={c.seed}", f"--resume={self._has_checkpoints('pretrain_gidm')}",
            *self.size.extra.get("gidm", []),
        ]  # fmt: skip

    def _has_checkpoints(self, stage: str) -> str:
        return "true" if any((self.out / stage / "checkpoints").glob("*")) else "false"

    def _train_command(self, policy: str) -> list[str]:
        c = self.config
        train_dir = self.out / "train" / policy
        resume_config = train_dir / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
        if resume_config.is_file():  # continue an interrupted run
            return [*self._lerobot("lerobot_train"), f"--config_path={resume_config}", "--resume=true"]
        common = [
            *self._dataset_options(), f"--output_dir={train_dir}", f"--job_name={policy}", f"--steps={c.steps}",
            f"--batch_size={c.batch_size}", f"--save_freq={c.steps // c.curve_points}", "--log_freq=100",
            f"--num_workers={c.train_workers}", f"--seed={c.seed}", "--wandb.enable=false",
            "--policy.push_to_hub=false", f"--policy.device={c.device}",
        ]  # fmt: skip
        if policy != "act":  # ACT starts samples from every frame and has no warm-up
            common.append(f"--policy.drop_n_last_frames={c.drop_n_last_frames}")
        if policy.startswith("defi"):
            command = [
                *self._lerobot("lerobot_train"), f"--config_path={CONFIGS / self.size.defi_preset}", *common,
                f"--policy.clip_text_path={self.components / 'clip_text'}", f"--policy.t5_path={self.components / 't5'}",
                f"--policy.lr_warmup_steps={c.warmup_steps}", *self.size.extra.get("defi", []),
            ]  # fmt: skip
            if policy == "defi":
                command += [
                    f"--policy.gfdm_path={self.out / 'pretrain_gfdm' / 'gfdm'}",
                    f"--policy.gidm_path={self.out / 'pretrain_gidm' / 'model'}",
                ]
            else:
                command += [f"--policy.gfdm_path={self.components / 'svd_init'}"]
            return command
        size = c.camera_size
        inputs = {
            "observation.images.static": {"type": "VISUAL", "shape": [3, size, size]},
            "observation.images.gripper": {"type": "VISUAL", "shape": [3, size, size]},
            "observation.state": {"type": "STATE", "shape": [15]},
        }
        return [
            *self._lerobot("lerobot_train"), f"--policy.type={policy}", *common,
            f"--policy.input_features={json.dumps(inputs)}", "--policy.pretrained_backbone_weights=null",
            *([ "--policy.use_group_norm=true", f"--policy.scheduler_warmup_steps={c.warmup_steps}"]
              if policy == "diffusion" else []),
            *self.size.extra.get(policy, []),
        ]  # fmt: skip

    def checkpoint_dir(self, policy: str, step: int) -> Path:
        return self.out / "train" / policy / "checkpoints" / f"{step:06d}" / "pretrained_model"

    def _eval_command(self, policy: str, step: int, final: bool) -> list[str]:
        c = self.config
        episodes = c.eval_episodes_per_task if final else c.curve_episodes_per_task
        return [
            *self._lerobot("lerobot_eval"), f"--policy.path={self.checkpoint_dir(policy, step)}",
            f"--policy.device={c.device}", "--env.type=calvin", f"--env.tasks=[{','.join(c.tasks)}]",
            f"--env.camera_size={c.camera_size}", f"--env.renderer={c.renderer}", *self._instruction_options(),
            f"--env.episode_length={c.episode_length}", f"--eval.n_episodes={episodes}",
            f"--eval.batch_size={min(c.eval_batch_size, episodes)}", "--eval.use_async_envs=true",
            f"--seed={c.eval_seed}", f"--output_dir={self.out / 'eval' / f'{policy}_{step:06d}'}",
        ]  # fmt: skip

    def _instruction_options(self) -> list[str]:
        options = [f"--env.instructions={self.config.instructions}"]
        if self.config.instructions == "dataset":
            options.append(f"--env.instructions_dataset={self.dataset_root}")
        return options

    # --- run -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        jobs = self.jobs()
        if self.config.dry_run:
            for job in jobs:
                state = "done" if job.name in self.finished else "todo"
                print(f"[{state}] {job.name} (after {job.after}):\n  {shlex.join(job.command)}")
            return {}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        (self.out / "benchmark_config.json").write_text(json.dumps(asdict(self.config), indent=1))
        if any(policy.startswith("defi") for policy in self.config.policies):
            self._stage_in_process("components", self._write_components)
        limits = {
            "record": 1,
            "pretrain": self.config.max_parallel_training,
            "train": self.config.max_parallel_training,
            "eval": self.config.max_parallel_eval,
        }
        pending = [job for job in jobs if job.name not in self.finished]
        running: dict[str, tuple[Job, subprocess.Popen, float]] = {}
        failed: dict[str, str] = {}
        gpu_jobs = ("pretrain", "train")
        while pending or running:
            for name, (_, process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                seconds = time.time() - started
                if process.returncode == 0:
                    self.finished[name] = {"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                    self.stages_path.write_text(json.dumps(self.finished, indent=1))
                    print(f"[done] {name} in {seconds:.0f} s", flush=True)
                    self.write_results()
                else:
                    failed[name] = (
                        f"exit code {process.returncode} (log: {self.out / 'logs' / (name + '.log')})"
                    )
                    print(f"[failed] {name}: {failed[name]}", flush=True)
            blocked = {job.name for job in pending if any(dep in failed for dep in job.after)}
            for job in [job for job in pending if job.name in blocked]:
                failed[job.name] = "a stage it needs failed"
            pending = [job for job in pending if job.name not in blocked]
            ready = sorted(
                (job for job in pending if all(dep in self.finished for dep in job.after)),
                key=lambda job: job.priority,
            )
            for job in ready:
                busy = sum(1 for j, _, _ in running.values() if j.kind == job.kind or
                           (job.kind in gpu_jobs and j.kind in gpu_jobs))  # fmt: skip
                limit = limits[job.kind]
                if busy >= limit:
                    continue
                job.command = self._refresh(job)
                log = open(self.out / "logs" / f"{job.name}.log", "a")  # noqa: SIM115 (closed with the process)
                log.write(f"\n$ {shlex.join(job.command)}\n")
                log.flush()
                # One math thread per process unless set: the jobs and their data-loader workers share the cores.
                env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **os.environ}
                env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
                process = subprocess.Popen(
                    job.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.out
                )
                running[job.name] = (job, process, time.time())
                pending.remove(job)
                print(f"[start] {job.name}", flush=True)
            time.sleep(2)
        results = self.write_results(failed)
        return results

    def _refresh(self, job: Job) -> list[str]:
        """Commands that depend on what is on disk (resume flags) are rebuilt right before they start."""
        if job.name == "pretrain_gfdm":
            return self._gfdm_command()
        if job.name == "pretrain_gidm":
            return self._gidm_command()
        if job.name.startswith("train_"):
            return self._train_command(job.name.removeprefix("train_"))
        return job.command

    def _stage_in_process(self, name: str, function) -> None:
        if name in self.finished:
            return
        started = time.time()
        function()
        self.finished[name] = {
            "seconds": time.time() - started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.stages_path.write_text(json.dumps(self.finished, indent=1))

    def _write_components(self) -> None:
        write_stand_in_components(component_configs(self.size.components), self.components, self.config.seed)

    # --- results ---------------------------------------------------------------------------------------
    def write_results(self, failed: dict[str, str] | None = None) -> dict:
        c = self.config
        machine = machine_description(c.device)
        results: dict = {
            "config": asdict(c),
            "machine": machine,
            "failed_stages": failed or {},
            "policies": {},
        }
        recording = self.dataset_root / "meta" / "calvin_recording.json"
        if recording.is_file():
            report = json.loads(recording.read_text())
            results["dataset"] = {
                "root": str(self.dataset_root),
                "episodes": report["total_episodes"],
                "frames": sum(e["length"] for e in report["episodes"]),
                "expert": report["tasks"],
                "recording_seconds": self.finished.get("record", {}).get("seconds"),
            }
        for policy in c.policies:
            entry: dict = {"description": POLICIES[policy], "machine": machine, "evaluations": []}
            train = self.finished.get(f"train_{policy}")
            if train is not None:
                entry["training"] = {
                    "steps": c.steps,
                    "batch_size": c.batch_size,
                    "samples": c.steps * c.batch_size,
                    "wall_seconds": train["seconds"],
                }
                if policy == "defi":
                    entry["training"]["pretraining_wall_seconds"] = {
                        stage: self.finished.get(stage, {}).get("seconds")
                        for stage in ("pretrain_gfdm", "pretrain_gidm")
                    }
            for step in self.checkpoint_steps():
                info_path = self.out / "eval" / f"{policy}_{step:06d}" / "eval_info.json"
                if info_path.is_file():
                    entry["evaluations"].append(
                        {"step": step, **summarize_eval(json.loads(info_path.read_text()))}
                    )
            finals = [e for e in entry["evaluations"] if e["step"] == c.steps]
            if finals:
                entry["final"] = finals[0]
            results["policies"][policy] = entry
        (self.out / RESULTS_FILE).write_text(json.dumps(results, indent=1))
        plot_results(results, self.out / PLOT_FILE)
        return results


def merge(config: BenchmarkConfig) -> dict:
    """``--merge``: one results.json and plot in ``output_dir`` from the results of parts run separately."""
    results = merge_results([load_results(path) for path in config.merge])
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1))
    plot_results(results, out / PLOT_FILE)
    return results


def main() -> None:
    config = parse_or_exit(BenchmarkConfig)
    results = merge(config) if config.merge else Benchmark(config).run()
    if results:
        for policy, entry in results["policies"].items():
            final = entry.get("final")
            print(f"{policy:22s} mean success {final['mean_success']:.1%}" if final else f"{policy:22s} -")
        print(f"results: {Path(config.output_dir) / RESULTS_FILE}")


if __name__ == "__main__":
    main()
