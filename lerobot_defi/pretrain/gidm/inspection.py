"""Visual check of a trained GIDM: which frame pairs share a latent action.

A latent action is the tuple of ``num_latent_tokens`` code indices the encoder gives a pair. Pairs are taken
evenly from each dataset (no augmentation), encoded, grouped by their latent action and written as

* ``latent_actions.png``: one row per latent action (most frequent first): ``frame t | frame t+gap``
  thumbnails of pairs that share it, with their instructions;
* ``latent_actions.json``: every pair (dataset, episode, frame, gap, task, code) and a summary
  (distinct latent actions, perplexity of the latent-action distribution, per-token code usage).

Standalone use on a saved model (the frozen encoders and image size are read from its ``gidm_training.json``)::

    python -m lerobot_defi.pretrain.gidm.inspection --model_path=outputs/gidm/model \\
        --datasets='[{repo_id: calvin, root: /data/calvin_lerobot, gap: 5}]' --output_dir=outputs/gidm/inspect
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lerobot_defi.command_line import parse_or_exit
from lerobot_defi.models.codebook_stats import perplexity
from lerobot_defi.models.gidm import LatentActionModel
from lerobot_defi.pretrain.gidm.config import GIDM_TRAINING_INFO_FILE
from lerobot_defi.pretrain.gidm.features import (
    DinoPatchFeatures,
    T5InstructionFeatures,
    build_frozen_encoders,
    encode_pair_features,
)
from lerobot_defi.pretrain.gidm.frame_pairs import FramePairDataset, FramePairSourceConfig
from lerobot_defi.pretrain.shared.cli import parse_config

PROG = "python -m lerobot_defi.pretrain.gidm.inspection"
SHEET_FILE = "latent_actions.png"
RECORDS_FILE = "latent_actions.json"


@dataclass
class LatentActionRecord:
    """One encoded pair: where it comes from, its latent action, and ``thumbnail (h, 2w, 3)`` uint8."""

    repo_id: str
    episode_index: int
    frame_index: int
    gap: int
    task: str
    code: tuple[int, ...]
    thumbnail: np.ndarray = field(repr=False)

    def to_json(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "episode_index": self.episode_index,
            "frame_index": self.frame_index,
            "gap": self.gap,
            "task": self.task,
            "code": list(self.code),
        }


def _pair_thumbnail(frames: torch.Tensor, size: int) -> np.ndarray:
    """``frames (2, 3, S, S)`` in [0, 1] -> ``(size, 2 * size, 3)`` uint8 (frame t left, frame t+gap right)."""
    small = torch.nn.functional.interpolate(
        frames.float(), size=(size, size), mode="bilinear", antialias=True
    )
    return (
        (small.clamp(0, 1) * 255)
        .round()
        .to(torch.uint8)
        .permute(2, 0, 3, 1)
        .reshape(size, 2 * size, 3)
        .numpy()
    )


@torch.no_grad()
def collect_latent_actions(
    model: LatentActionModel,
    dino: DinoPatchFeatures,
    t5: T5InstructionFeatures,
    datasets: list[FramePairDataset],
    num_pairs: int = 64,
    batch_size: int = 16,
    thumbnail_size: int = 64,
) -> list[LatentActionRecord]:
    """Encode ``num_pairs`` pairs spread evenly over ``datasets`` (and over each dataset's pairs)."""
    device = next(model.parameters()).device
    model.eval()
    per_dataset = [len(idx) for idx in np.array_split(np.arange(num_pairs), len(datasets))]
    items = []
    for dataset, count in zip(datasets, per_dataset):
        for index in np.unique(np.linspace(0, len(dataset) - 1, num=max(count, 1)).round().astype(int)):
            items.append((dataset.source.repo_id, dataset[int(index)]))
    # Batches hold one instruction each: with the official padding-mask ordering (``tiled_padding_mask``) a
    # pair's code would otherwise depend on the other instructions of its batch.
    by_task: dict[str, list] = {}
    for entry in items:
        by_task.setdefault(entry[1]["task"], []).append(entry)
    chunks = [
        same[start : start + batch_size]
        for same in by_task.values()
        for start in range(0, len(same), batch_size)
    ]
    records = []
    for chunk in chunks:
        frames = torch.stack([item["frames"] for _, item in chunk])
        visual, text, mask = encode_pair_features(
            dino, t5, frames.to(device), [item["task"] for _, item in chunk]
        )
        codes = model.encoder(visual, text, mask)["indices"].cpu()
        for (repo_id, item), code in zip(chunk, codes):
            records.append(
                LatentActionRecord(
                    repo_id=repo_id,
                    episode_index=item["episode_index"],
                    frame_index=item["frame_index"],
                    gap=item["gap"],
                    task=item["task"],
                    code=tuple(int(c) for c in code),
                    thumbnail=_pair_thumbnail(item["frames"], thumbnail_size),
                )
            )
    return records


def group_by_latent_action(records: list[LatentActionRecord]) -> list[tuple[tuple[int, ...], list]]:
    """``[(code, records sharing it), ...]``, most frequent latent action first (ties by code)."""
    groups: dict[tuple[int, ...], list[LatentActionRecord]] = {}
    for record in records:
        groups.setdefault(record.code, []).append(record)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def summarize(records: list[LatentActionRecord], codebook_size: int) -> dict:
    """Distinct latent actions, their perplexity, the largest group and per-token code usage."""
    counts = torch.tensor(list(Counter(r.code for r in records).values()))
    tokens = np.array([r.code for r in records])
    return {
        "num_pairs": len(records),
        "distinct_latent_actions": len(counts),
        "latent_action_perplexity": float(perplexity(counts)),
        "largest_group": int(counts.max()),
        "codes_used_per_token": [len(set(tokens[:, k].tolist())) for k in range(tokens.shape[1])],
        "codebook_size": codebook_size,
    }


def render_latent_action_sheet(
    groups: list[tuple[tuple[int, ...], list[LatentActionRecord]]],
    path: Path,
    max_groups: int = 8,
    pairs_per_group: int = 4,
) -> None:
    """PNG: one row per latent action (label + up to ``pairs_per_group`` pair thumbnails with their task)."""
    shown = groups[:max_groups]
    h, w2 = shown[0][1][0].thumbnail.shape[:2]
    label_w, caption_h, pad, title_h = 150, 24, 6, 20
    cell_w = w2 + pad
    row_h = h + caption_h + pad
    sheet = Image.new("RGB", (label_w + pairs_per_group * cell_w, title_h + len(shown) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    title = f"{sum(len(m) for _, m in groups)} pairs, {len(groups)} latent actions; each pair: frame t | frame t+gap"
    draw.text((4, 4), title, fill="black", font=font)
    for row, (code, members) in enumerate(shown):
        y = title_h + row * row_h
        draw.text((4, y + 4), f"action {code}\n{len(members)} pair(s)", fill="black", font=font)
        for col, record in enumerate(members[:pairs_per_group]):
            x = label_w + col * cell_w
            sheet.paste(Image.fromarray(record.thumbnail), (x, y))
            draw.line([(x + w2 // 2, y), (x + w2 // 2, y + h - 1)], fill="white")
            caption = textwrap.shorten(f"{record.task} (+{record.gap})", width=max(w2 // 6, 10))
            draw.text((x, y + h + 2), caption, fill="black", font=font)
    sheet.save(path)


def write_inspection(
    model: LatentActionModel,
    dino: DinoPatchFeatures,
    t5: T5InstructionFeatures,
    datasets: list[FramePairDataset],
    output_dir: str | Path,
    num_pairs: int = 64,
    batch_size: int = 16,
) -> dict:
    """Encode, group, write ``latent_actions.png`` and ``latent_actions.json`` into ``output_dir``; returns
    the summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = collect_latent_actions(model, dino, t5, datasets, num_pairs=num_pairs, batch_size=batch_size)
    groups = group_by_latent_action(records)
    summary = summarize(records, model.config.codebook_size)
    render_latent_action_sheet(groups, output_dir / SHEET_FILE)
    payload = {
        "summary": summary,
        "groups": [{"code": list(code), "pairs": [r.to_json() for r in members]} for code, members in groups],
    }
    (output_dir / RECORDS_FILE).write_text(json.dumps(payload, indent=2))
    return summary


@dataclass
class GIDMInspectConfig:
    """Inspect a saved GIDM on some datasets (frozen encoders default to those in its gidm_training.json)."""

    model_path: str = ""
    datasets: list[FramePairSourceConfig] = field(default_factory=list)
    output_dir: str = "outputs/gidm_inspect"
    num_pairs: int = 64
    batch_size: int = 16
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    # Override what gidm_training.json says (needed for a model saved without it).
    dinov2_path: str | None = None
    t5_path: str | None = None
    image_size: int | None = None

    def __post_init__(self):
        if not self.model_path or not self.datasets:
            raise ValueError(
                "give --model_path=<GIDM folder or Hub id> and --datasets='[{repo_id: ..., root: ...}]'"
            )
        if self.num_pairs < 1 or self.batch_size < 1:
            raise ValueError(
                f"--num_pairs and --batch_size must be >= 1, got {self.num_pairs}, {self.batch_size}"
            )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_or_exit(GIDMInspectConfig, argv, PROG, parse=parse_config)
    model = LatentActionModel.from_pretrained(cfg.model_path)
    info_file = Path(cfg.model_path) / GIDM_TRAINING_INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    dinov2_path = cfg.dinov2_path or info.get("dinov2_path")
    t5_path = cfg.t5_path or info.get("t5_path")
    dinov2_config = None if cfg.dinov2_path else info.get("dinov2_config")
    t5_config = None if cfg.t5_path else info.get("t5_config")
    if dinov2_path is None and dinov2_config is None:
        print(
            f"error: {cfg.model_path} has no {GIDM_TRAINING_INFO_FILE}: give --dinov2_path and --t5_path",
            file=sys.stderr,
        )
        raise SystemExit(2)
    dino, t5 = build_frozen_encoders(dinov2_path, dinov2_config, t5_path, t5_config, info.get("seed", 42))
    image_size = cfg.image_size or info.get("image_size", 224)
    datasets = [
        FramePairDataset(
            source,
            image_size=image_size,
            normalize_instructions=info.get("normalize_instructions", True),
            seed=info.get("seed", 42),
        )
        for source in cfg.datasets
    ]
    for module in (model, dino, t5):
        module.to(cfg.device)
    summary = write_inspection(model, dino, t5, datasets, cfg.output_dir, cfg.num_pairs, cfg.batch_size)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
