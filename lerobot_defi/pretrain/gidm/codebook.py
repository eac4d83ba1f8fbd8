"""Codebook bookkeeping of GIDM pretraining: usage and perplexity for the logs, and dead-code reset
(docs/method.md §3.2).

The one place the codes are counted: from the quantiser's indices of each step (a count kept inside the quantiser
would be overwritten by DDP's buffer broadcast with rank 0's copy). Before a reset the counts of all processes are
summed, and every process draws the replacement codes from the same seeded generator, so the codebooks stay
identical. The statistics themselves are ``models/codebook_stats.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lerobot_defi.models.codebook_stats import code_counts, codebook_stats
from lerobot_defi.models.gidm import VectorQuantizer


class CodebookMonitor:
    """Per-code counts over two horizons: since the last log line (``window``) and since the last reset."""

    def __init__(self, codebook_size: int):
        self.window = torch.zeros(codebook_size, dtype=torch.long)
        self.since_reset = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, indices: Tensor) -> None:
        """``indices (B, K)`` of one step on this process (counted on their device: no host sync)."""
        counts = code_counts(indices, len(self.window))
        if self.window.device != counts.device:
            self.window, self.since_reset = self.window.to(counts.device), self.since_reset.to(counts.device)
        self.window += counts
        self.since_reset += counts

    def window_stats(self, window_counts: Tensor | None = None) -> dict[str, float]:
        """Fraction of codes used and perplexity since the last call (pass all-process counts when
        distributed); clears the window."""
        stats = codebook_stats((self.window if window_counts is None else window_counts).cpu())
        self.window.zero_()
        return stats

    def reset_dead_codes(
        self, quantizer: VectorQuantizer, generator: torch.Generator, total_counts: Tensor | None = None
    ) -> int:
        """Replace every code unused since the last reset (over all processes when ``total_counts`` is given)
        by a copy of a random used code; clears the counts. Returns the number of codes replaced."""
        replaced = quantizer.reset_dead_codes(
            self.since_reset if total_counts is None else total_counts, generator
        )
        self.since_reset.zero_()
        return replaced

    def load_state_dict(self, state: dict) -> None:
        """Restore the counts saved with a checkpoint (``{"window": ..., "since_reset": ...}``)."""
        self.window.copy_(torch.as_tensor(state["window"]))
        self.since_reset.copy_(torch.as_tensor(state["since_reset"]))
