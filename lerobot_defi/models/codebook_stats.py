"""Codebook statistics of a vector quantiser (docs/method.md §3.2): how often each code is chosen, the fraction
of codes in use and the perplexity of the code distribution.

The one place these are computed: GIDM pretraining logs them (``pretrain/gidm/codebook.py``), the visual check
reports the perplexity of its latent actions (``pretrain/gidm/inspection.py``), and the policy logs them per batch.
Counts stay on their device (no host synchronisation) until :func:`codebook_stats` turns them into numbers.
"""

import torch
from torch import Tensor


def code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """How often each code occurs: integer ``indices`` of any shape -> ``(codebook_size,)`` long counts."""
    return torch.bincount(indices.detach().flatten(), minlength=codebook_size)


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of the distribution given by ``counts`` (1 = one code, ``len(counts)`` = uniform); 0 when
    every count is 0. A float64 scalar tensor on the device of ``counts``."""
    counts = counts.double()
    total = counts.sum()
    p = counts / total.clamp_min(1)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()
    return torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))


def codebook_stats(counts: Tensor) -> dict[str, float]:
    """``{"codebook_usage": fraction of codes used, "codebook_perplexity": ...}`` of per-code ``counts``."""
    return {
        "codebook_usage": float((counts > 0).float().mean()),
        "codebook_perplexity": float(perplexity(counts)),
    }
