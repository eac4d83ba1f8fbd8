"""Codebook bookkeeping of GIDM pretraining: usage and perplexity for the logs, and dead-code reset (spec 3.2).

Counts come from the quantiser's indices of each step (not from the quantiser's own ``usage`` buffer, which DDP's
buffer broadcast would overwrite with rank 0's copy). Before a reset the counts of all processes are summed, and
every process draws the replacement codes from the same seeded generator, so the codebooks stay identical.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lerobot_defi.models.gidm import VectorQuantizer


def codebook_perplexity(counts: Tensor) -> float:
    """``exp(entropy)`` of the code distribution given by ``counts`` (1 = one code, codebook_size = uniform)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


class CodebookMonitor:
    """Per-code counts over two horizons: since the last log line (``window``) and since the last reset."""

    def __init__(self, codebook_size: int):
        self.window = torch.zeros(codebook_size, dtype=torch.long)
        self.since_reset = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, indices: Tensor) -> None:
        """``indices (B, K)`` of one step on this process (counted on their device: no host sync)."""
        counts = torch.bincount(indices.detach().flatten(), minlength=len(self.window))
        if self.window.device != counts.device:
            self.window, self.since_reset = self.window.to(counts.device), self.since_reset.to(counts.device)
        self.window += counts
        self.since_reset += counts

    def window_stats(self, window_counts: Tensor | None = None) -> dict[str, float]:
        """Fraction of codes used and perplexity since the last call (pass all-process counts when
        distributed); clears the window."""
        counts = (self.window if window_counts is None else window_counts).cpu()
        stats = {
            "codebook_usage": float((counts > 0).float().mean()),
            "codebook_perplexity": codebook_perplexity(counts),
        }
        self.window.zero_()
        return stats

    def reset_dead_codes(
        self, quantizer: VectorQuantizer, generator: torch.Generator, total_counts: Tensor | None = None
    ) -> int:
        """Replace every code unused since the last reset (over all processes when ``total_counts`` is given)
        by a copy of a random used code; clears the counts. Returns the number of codes replaced."""
        counts = self.since_reset if total_counts is None else total_counts
        quantizer.usage.copy_(counts.to(quantizer.usage.device))
        replaced = quantizer.reset_dead_codes(generator)
        self.since_reset.zero_()
        return replaced

    def state_dict(self) -> dict:
        return {"window": self.window.cpu().clone(), "since_reset": self.since_reset.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.window.copy_(torch.as_tensor(state["window"]))
        self.since_reset.copy_(torch.as_tensor(state["since_reset"]))
