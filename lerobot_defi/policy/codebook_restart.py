"""Dead-code restarts of the policy's GIDM quantiser while ``lerobot-train`` trains it (docs/training.md#s4).

Without a pretrained GIDM, the latent actions collapse within the first steps: the encoder's outputs of every
sample sit near one code per token slot (the slots start as learned queries that read the frame through nearly
uniform attention), the codebook moves onto them and the VQ losses fall to zero; the latent-action tokens are then
the same for every observation and carry nothing. The original has no remedy in Stage 3 (its GIDM comes pretrained;
Stage 2 copies used codes into unused ones once per epoch). Here every ``every_steps`` optimizer steps each code
that no sample chose since the last restart is re-initialised to a recent encoder output, so codes stay where the
encoder's outputs are and the quantiser keeps telling observations apart.

Counts are kept on the device (no host synchronisation per step). With several processes the counts are summed
over all of them and rank 0's restarted codebook is broadcast, so every replica keeps the same codebook.
"""

import logging

import torch
import torch.distributed as dist
from torch import Tensor

from lerobot_defi.models.codebook_stats import codebook_stats
from lerobot_defi.models.gidm import VectorQuantizer

logger = logging.getLogger(__name__)


class CodebookRestarts:
    """Per-code counts of the training steps since the last restart and since the start, the latest encoder
    outputs, and the restarts themselves (``every_steps = 0``: count only, never restart)."""

    def __init__(self, codebook_size: int, every_steps: int, seed: int = 0):
        self.codebook_size = codebook_size
        self.every_steps = every_steps
        self.window = torch.zeros(codebook_size, dtype=torch.long)
        self.total = torch.zeros(codebook_size, dtype=torch.long)
        self.latents: Tensor | None = None
        self.steps = 0
        self.restarted = 0
        self.generator = torch.Generator().manual_seed(seed)

    def observe(self, counts: Tensor, latents: Tensor) -> None:
        """One training batch: how often it chose each code, ``counts (codebook_size,)`` (``code_counts`` of its
        indices), and the encoder outputs ``latents (B, K, latent_dim)`` before quantisation."""
        if self.window.device != counts.device:
            self.window, self.total = self.window.to(counts.device), self.total.to(counts.device)
        self.window += counts
        self.total += counts
        self.latents = latents.detach().reshape(-1, latents.shape[-1])

    def step(self, quantizer: VectorQuantizer) -> int:
        """After an optimizer step: every ``every_steps`` steps restart the codes unused since the last restart.
        Returns the number of codes restarted now (the same on every process)."""
        self.steps += 1
        if not self.every_steps or self.steps % self.every_steps or self.latents is None:
            return 0
        counts = self.window.clone()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
        dead = int((counts == 0).sum())
        if dead and (not distributed or dist.get_rank() == 0):
            quantizer.restart_dead_codes(counts, self.latents, self.generator)
        if dead and distributed:
            dist.broadcast(quantizer.codebook.weight.data, src=0)
        self.window.zero_()
        self.restarted += dead
        if dead:
            logger.debug("GIDM codebook: %d unused codes restarted at step %d", dead, self.steps)
        return dead

    def summary(self) -> dict:
        """What training did with the codebook so far (saved next to the weights): counts per code, fraction of
        codes used, perplexity, restarted codes."""
        return {
            "steps": self.steps,
            "code_counts": self.total.cpu().tolist(),
            **codebook_stats(self.total.cpu()),
            "restart_every_steps": self.every_steps,
            "codes_restarted": self.restarted,
        }
