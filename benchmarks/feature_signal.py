"""Does a trained DeFI policy see the scene and fit its demonstrations? How much its features change with the image,
the GFDM's noise and the instruction, and the open-loop fit on its own training frames.

DeFI perceives the scene only through the frozen GFDM (one denoising step on the current frame plus fresh noise,
docs/method.md §4.3b) and the GIDM that reads the GFDM's features. With an untrained GFDM the features follow the
noise more than the image, and a policy trained on them learns to ignore them: it then acts from the instruction
alone. For pairs of frames ``(a, b)`` of a LeRobotDataset this prints relative changes ``||x(a) - x(b)|| / ||x(a)||``
of the GFDM features and of the action head's context:

* image: frame a vs frame b, both with a's instruction and the same GFDM noise draw;
* instruction: frame a with a's vs b's instruction;
* noise: frame a with two GFDM noise draws;

then the fit report (``lerobot_defi/policy/fit_report.py``) on ``num_frames`` frames of ``episodes`` (all frames of
those episodes with ``num_frames=0``): open-loop error against the mean action, the context's spread over frames and
noise draws, and the GIDM codes per token slot.

    python benchmarks/feature_signal.py --policy_path=outputs/train/defi/checkpoints/last/pretrained_model \\
        --dataset_root=outputs/closed_loop_calvin/dataset --episodes='[0]' --num_frames=0
"""

import json
from dataclasses import dataclass

import numpy as np
import torch

from lerobot_defi.command_line import parse_or_exit


@dataclass
class FeatureSignalConfig:
    # A trained DeFI checkpoint folder (pretrained_model/ of lerobot-train) or Hub id.
    policy_path: str
    # The LeRobotDataset folder it was trained on.
    dataset_root: str
    dataset_repo_id: str = "local/dataset"
    # Episodes the frames come from (None: all).
    episodes: list[int] | None = None
    # Frame pairs (a, b) whose features are compared (indices into the selected frames); default: drawn with seed.
    pairs: list[list[int]] | None = None
    num_pairs: int = 4
    # Frames of the fit report, drawn with seed; 0: every selected frame.
    num_frames: int = 24
    seed: int = 0
    # Where to write the numbers as JSON (optional).
    output_json: str | None = None


def relative_change(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x - y).norm() / x.norm().clamp_min(1e-12)).item()


def main() -> None:
    cfg = parse_or_exit(FeatureSignalConfig)
    import lerobot_policy_defi  # noqa: F401  (registers the policy type)
    from lerobot_defi.policy.fit_report import fit_report, load_checkpoint_and_dataset

    policy, preprocess, postprocess, dataset = load_checkpoint_and_dataset(
        cfg.policy_path, cfg.dataset_repo_id, cfg.dataset_root, cfg.episodes
    )
    rng = np.random.default_rng(cfg.seed)

    def batch_of(item: dict) -> dict:
        return preprocess({k: v.unsqueeze(0) if torch.is_tensor(v) else [v] for k, v in item.items()})

    captured = {}  # the GFDM's output of the last encode, taken on its way into the Video Former and GIDM
    policy.gfdm.register_forward_hook(lambda module, args, output: captured.update(gfdm=output))

    def features(batch: dict, noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        policy.config.feature_noise_seed = noise_seed
        context = policy.encode_observation(batch)["context"]
        return captured["gfdm"], context

    pairs = cfg.pairs or [rng.choice(len(dataset), 2, replace=False).tolist() for _ in range(cfg.num_pairs)]
    rows = []
    print(f"{'frames':>14}  GFDM image / noise   context image / instruction / noise")
    with torch.no_grad():
        for a, b in pairs:
            batch_a, batch_b = batch_of(dataset[a]), batch_of(dataset[b])
            gfdm_a1, context_a1 = features(batch_a, 1)
            gfdm_a2, context_a2 = features(batch_a, 2)
            gfdm_b1, context_b1 = features({**batch_b, "task": batch_a["task"]}, 1)
            _, context_a_told_b = features({**batch_a, "task": batch_b["task"]}, 1)
            row = {
                "frames": [a, b],
                "gfdm_image": relative_change(gfdm_a1, gfdm_b1),
                "gfdm_noise": relative_change(gfdm_a1, gfdm_a2),
                "context_image": relative_change(context_a1, context_b1),
                "context_instruction": relative_change(context_a1, context_a_told_b),
                "context_noise": relative_change(context_a1, context_a2),
            }
            rows.append(row)
            print(
                f"{a:>6} vs {b:<6}  {row['gfdm_image']:>5.3f} / {row['gfdm_noise']:<5.3f}        "
                f"{row['context_image']:>5.3f} / {row['context_instruction']:>5.3f} / {row['context_noise']:<5.3f}"
            )
    policy.config.feature_noise_seed = None
    frames = range(len(dataset))
    if cfg.num_frames:
        frames = sorted(rng.choice(len(dataset), min(cfg.num_frames, len(dataset)), replace=False).tolist())
    report = fit_report(policy, preprocess, postprocess, [dataset[int(i)] for i in frames], seed=cfg.seed)
    print(report.summary())
    if cfg.output_json:
        with open(cfg.output_json, "w") as f:
            json.dump({"pairs": rows, "fit": report.as_dict()}, f, indent=1)


if __name__ == "__main__":
    main()
