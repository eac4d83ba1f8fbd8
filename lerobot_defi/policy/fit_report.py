"""Does a trained DeFI policy fit its demonstrations? Open-loop numbers on frames of a LeRobotDataset
(docs/training.md#s4).

* **open-loop error**: mean absolute error between the sampled action chunk and the recorded one, in the dataset's
  units, over the valid (not padded) steps and every action channel except a binarised gripper; next to the error
  of always predicting the frames' mean action (``ratio`` = error / baseline; a policy that fits is well below 1);
* **gripper agreement**: fraction of valid steps where a binarised gripper has the recorded sign;
* **context**: how much the action head's context changes across the frames (same instruction, same GFDM noise)
  and between two GFDM noise draws on the same frames, relative to its norm: a policy that ignores the image has
  a frame spread near 0;
* **latent-action codes**: distinct GIDM codes per token slot over the frames and the perplexity of all picks: one
  code per slot means the latent actions do not tell the frames apart.

Sampling is seeded (GFDM noise and chunk noise), so the report of one checkpoint is reproducible.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import default_collate

from lerobot_defi.models.codebook_stats import code_counts, perplexity
from lerobot_defi.policy.modeling_defi import DeFIPolicy


@dataclass
class FitReport:
    frames: int
    open_loop_error: float
    mean_action_error: float
    ratio: float
    gripper_agreement: float | None
    context_frame_spread: float
    context_noise_change: float
    codes_per_slot: list[int]
    code_perplexity: float

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        gripper = "" if self.gripper_agreement is None else f", gripper sign {self.gripper_agreement:.0%}"
        return (
            f"{self.frames} frames: open-loop error {self.open_loop_error:.4f} vs {self.mean_action_error:.4f} for "
            f"the mean action ({self.ratio:.0%}){gripper}; context spread over frames {self.context_frame_spread:.3f}, "
            f"between noise draws {self.context_noise_change:.3f}; GIDM codes per slot {self.codes_per_slot} "
            f"(perplexity {self.code_perplexity:.2f})"
        )


def relative_spread(x: Tensor) -> float:
    """``||x - mean_0(x)|| / ||x||``: how much the rows of ``x`` differ, relative to their size."""
    return ((x - x.mean(0, keepdim=True)).norm() / x.norm().clamp_min(1e-12)).item()


@torch.no_grad()
def fit_report(
    policy: DeFIPolicy, preprocess, postprocess, items: list[dict], seed: int = 0, batch_size: int = 16
) -> FitReport:
    """The report on ``items``: LeRobotDataset items with the policy's delta timestamps (``action (T, A)``,
    ``action_is_pad (T,)``, the cameras and ``task``). ``preprocess`` / ``postprocess``: the policy's processors.
    The policy's ``feature_noise_seed`` is restored afterwards."""
    was_training, noise_seed = policy.training, policy.config.feature_noise_seed
    policy.eval()
    generator = torch.Generator().manual_seed(seed)
    chunks, contexts, other_noise, indices = [], [], [], []
    try:
        for start in range(0, len(items), batch_size):
            batch = preprocess(default_collate(items[start : start + batch_size]))
            size = len(batch["task"])
            shape = (size, policy.config.chunk_size, policy.config.action_dim)
            noise = torch.randn(shape, generator=generator).to(policy.config.device)
            policy.config.feature_noise_seed = seed
            chunks.append(postprocess(policy.predict_action_chunk(batch, noise=noise)).cpu())
            encoded = policy.encode_observation(batch)
            contexts.append(encoded["context"].float().cpu())
            indices.append(encoded["indices"].cpu())
            policy.config.feature_noise_seed = seed + 1
            other_noise.append(policy.encode_observation(batch)["context"].float().cpu())
    finally:
        policy.config.feature_noise_seed = noise_seed
        policy.train(was_training)
    predicted = torch.cat(chunks)
    recorded = torch.stack([item["action"] for item in items]).float()
    valid = ~torch.stack([item["action_is_pad"] for item in items])
    steps = min(predicted.shape[1], recorded.shape[1])
    predicted, recorded, valid = predicted[:, :steps], recorded[:, :steps], valid[:, :steps]
    channels = list(range(recorded.shape[-1]))
    gripper = None
    if policy.config.binarize_gripper:
        gripper_channel = channels.pop(policy.config.gripper_action_index)
        same_sign = torch.sign(predicted[..., gripper_channel]) == torch.sign(recorded[..., gripper_channel])
        gripper = same_sign[valid].float().mean().item()
    mask = valid[..., None].expand(-1, -1, len(channels)).float()
    error = ((predicted[..., channels] - recorded[..., channels]).abs() * mask).sum() / mask.sum()
    mean_action = recorded[:, 0, channels].mean(0)
    baseline = ((mean_action - recorded[..., channels]).abs() * mask).sum() / mask.sum()
    context, context_other = torch.cat(contexts), torch.cat(other_noise)
    codes = torch.cat(indices)  # (N, K)
    counts = code_counts(codes, policy.config.gidm.codebook_size)
    return FitReport(
        frames=len(items),
        open_loop_error=error.item(),
        mean_action_error=baseline.item(),
        ratio=(error / baseline.clamp_min(1e-12)).item(),
        gripper_agreement=gripper,
        context_frame_spread=relative_spread(context),
        context_noise_change=((context - context_other).norm() / context.norm().clamp_min(1e-12)).item(),
        codes_per_slot=[len(set(codes[:, k].tolist())) for k in range(codes.shape[1])],
        code_perplexity=float(perplexity(counts)),
    )


def load_checkpoint_and_dataset(checkpoint: str | Path, repo_id: str, root: str | Path, episodes=None):
    """A saved policy (``.../pretrained_model``) in eval mode, its processors and the LeRobotDataset at ``root``
    (``episodes``, default all) with the policy's delta timestamps: ``(policy, preprocess, postprocess, dataset)``."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors

    from lerobot_defi.conversions.video_backend import video_backend

    policy = DeFIPolicy.from_pretrained(checkpoint).eval()
    preprocess, postprocess = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    dataset = LeRobotDataset(
        repo_id,
        root=root,
        episodes=episodes,
        delta_timestamps=resolve_delta_timestamps(policy.config, meta),
        video_backend=video_backend()[0],
    )
    return policy, preprocess, postprocess, dataset


def training_start_items(dataset, drop_n_last_frames: int) -> list[dict]:
    """The items training samples start from: every frame but the last ``drop_n_last_frames`` of each episode."""
    lengths = dict(zip(dataset.meta.episodes["episode_index"], dataset.meta.episodes["length"], strict=True))
    items = [dataset[i] for i in range(len(dataset))]
    return [
        it for it in items if int(it["frame_index"]) < lengths[int(it["episode_index"])] - drop_n_last_frames
    ]


def checkpoint_fit_report(
    checkpoint: str | Path, repo_id: str, root: str | Path, episodes=None, seed: int = 0
):
    """The fit report of a saved policy on the frames its training samples started from (its own
    ``drop_n_last_frames``) in ``episodes`` of the dataset at ``root``."""
    policy, preprocess, postprocess, dataset = load_checkpoint_and_dataset(
        checkpoint, repo_id, root, episodes
    )
    items = training_start_items(dataset, policy.config.drop_n_last_frames)
    return fit_report(policy, preprocess, postprocess, items, seed=seed)
