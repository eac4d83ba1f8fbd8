"""Measurements of a GIDM run across processes: the loss of a batch, means over steps and processes, the
validation loss on held-out episodes, and the check that all processes end with the same weights."""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lerobot_defi.pretrain.gidm.features import encode_pair_features

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "reconstruction_loss", "code_loss", "commitment_loss")


def gidm_loss(model, dino, t5, batch: dict, device: torch.device) -> dict[str, Tensor]:
    """One forward pass of the GIDM on a collated batch: the model's outputs (losses, indices, ...)."""
    visual, text, mask = encode_pair_features(
        dino, t5, batch["frames"].to(device, non_blocking=True), batch["task"]
    )
    return model(visual, text, mask)


def reduce_mean(accelerator, values: dict[str, float | Tensor], count: int) -> dict[str, float]:
    """Mean of per-step sums (floats or 0-d tensors) over steps and processes."""
    device = accelerator.device
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values.values()])
    packed = torch.cat([packed, torch.tensor([float(count)], dtype=torch.float64, device=device)])
    packed = accelerator.reduce(packed, reduction="sum")
    return {k: float(v) / max(float(packed[-1]), 1.0) for k, v in zip(values, packed[:-1].tolist())}


@torch.no_grad()
def evaluate(accelerator, model, dino, t5, loader: DataLoader, max_batches: int) -> dict[str, float]:
    """Mean losses over the first ``max_batches`` validation batches of every process (``val_<loss>``)."""
    model.eval()
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    count = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        with accelerator.autocast():
            out = gidm_loss(model, dino, t5, batch, accelerator.device)
        for key in LOSS_KEYS:
            sums[key] += float(out[key])
        count += 1
    model.train()
    return {f"val_{k}": v for k, v in reduce_mean(accelerator, sums, count).items()}


def check_processes_agree(accelerator, model) -> None:
    """All processes must end with the same weights (DDP + identical codebook resets); raise if not."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    sums = accelerator.gather(checksum[None].to(accelerator.device)).cpu()
    if not torch.allclose(sums, sums[0].expand_as(sums), rtol=0, atol=0):
        raise RuntimeError(
            f"GIDM weights differ between processes after training (checksums {sums.tolist()})"
        )
    logger.info("weights identical on all %d processes", accelerator.num_processes)
