"""Can a DeFI preset memorise a few demonstrations? Trains it with ``lerobot-train`` on the chosen episodes of a
LeRobotDataset and writes the fit report (``lerobot_defi/policy/fit_report.py``: open-loop error against the mean
action, context spread, GIDM codes) of every saved checkpoint on the frames training samples start from, into
``<output_dir>/fit.json`` (docs/training.md#s4).

    python benchmarks/fit_episodes.py --dataset_root=tests/data/calvin_expert_open_drawer --steps=500
    python benchmarks/fit_episodes.py --preset=defi_calvin_small.yaml --dataset_root=outputs/closed_loop/dataset \\
        --episodes='[0]' --device=cuda --steps=1000 --stand_in_components=calvin_small_components.yaml \\
        --extra='[--policy.optimizer_lr=1e-3]'
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lerobot_defi.command_line import parse_or_exit

REPO = Path(__file__).resolve().parents[1]


@dataclass
class FitEpisodesConfig:
    dataset_root: str
    output_dir: str = "outputs/fit_episodes"
    dataset_repo_id: str = "local/dataset"
    # Preset in configs/ (or a path) given to lerobot-train as --config_path.
    preset: str = "defi_tiny.yaml"
    episodes: list[int] = field(default_factory=lambda: [0])
    steps: int = 500
    batch_size: int = 16
    checkpoints: int = 2
    device: str = "cpu"
    seed: int = 1000
    # Components of configs/ (e.g. calvin_small_components.yaml) whose seeded random stand-ins for SVD, CLIP text and
    # T5 are written to <output_dir>/components and passed by path, as benchmarks/closed_loop_calvin.py does for
    # presets that need them (the small one); none: the preset builds its own (the tiny one).
    stand_in_components: str | None = None
    # More lerobot-train options, e.g. another learning rate.
    extra: list[str] = field(default_factory=list)


def main() -> None:
    cfg = parse_or_exit(FitEpisodesConfig)
    out = Path(cfg.output_dir).resolve()
    preset = Path(cfg.preset) if Path(cfg.preset).is_file() else REPO / "configs" / cfg.preset
    every = max(1, cfg.steps // cfg.checkpoints)
    components = []
    if cfg.stand_in_components:
        from closed_loop_components import component_configs, write_stand_in_components

        folder = out / "components"
        write_stand_in_components(component_configs(cfg.stand_in_components), folder, cfg.seed)
        components = [
            f"--policy.gfdm_path={folder / 'svd_init'}",
            f"--policy.clip_text_path={folder / 'clip_text'}",
            f"--policy.t5_path={folder / 't5'}",
        ]
    command = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train", f"--config_path={preset}",
        f"--dataset.repo_id={cfg.dataset_repo_id}", f"--dataset.root={cfg.dataset_root}",
        f"--dataset.episodes=[{','.join(map(str, cfg.episodes))}]", f"--output_dir={out / 'train'}",
        f"--steps={cfg.steps}", f"--batch_size={cfg.batch_size}", f"--save_freq={every}", "--log_freq=50",
        f"--seed={cfg.seed}", f"--policy.device={cfg.device}", "--wandb.enable=false", *components, *cfg.extra,
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.time()
    with open(out / "train.log", "w") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if returncode:
        sys.exit(f"error: lerobot-train exited with {returncode}; log: {out / 'train.log'}")
    training_seconds = time.time() - started

    import lerobot_policy_defi  # noqa: F401  (registers the policy type)
    from lerobot_defi.policy.fit_report import checkpoint_fit_report

    results = {
        "config": vars(cfg),
        "command": command,
        "training_seconds": training_seconds,
        "checkpoints": [],
    }
    for checkpoint in sorted((out / "train" / "checkpoints").glob("[0-9]*")):
        report = checkpoint_fit_report(
            checkpoint / "pretrained_model", cfg.dataset_repo_id, cfg.dataset_root, cfg.episodes, seed=0
        )
        print(f"step {int(checkpoint.name)}: {report.summary()}", flush=True)
        results["checkpoints"].append({"step": int(checkpoint.name), **report.as_dict()})
    (out / "fit.json").write_text(json.dumps(results, indent=1))
    print(f"fit report: {out / 'fit.json'}")


if __name__ == "__main__":
    main()
