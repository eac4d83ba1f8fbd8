"""The tri-stage learning-rate schedule that DeFI's config intends (docs/method.md §4.8, §8.1; the released code
never applies it, so the official default is a constant rate — see ``DeFIConfig.lr_schedule``)."""

import math
from dataclasses import dataclass

from lerobot.optim.schedulers import LRSchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def tristage_factor(
    step: int,
    total_steps: int,
    warmup_fraction: float,
    hold_fraction: float,
    initial_scale: float,
    final_scale: float,
) -> float:
    """Multiplier of the peak rate at ``step``: linear ``initial_scale -> 1`` over the warm-up, 1 during the
    hold, cosine ``1 -> final_scale`` over the rest, then ``final_scale``."""
    warmup = max(1, round(warmup_fraction * total_steps))
    hold = round(hold_fraction * total_steps)
    decay = max(1, total_steps - warmup - hold)
    if step < warmup:
        return initial_scale + (1.0 - initial_scale) * step / warmup
    if step < warmup + hold:
        return 1.0
    progress = min(1.0, (step - warmup - hold) / decay)
    return final_scale + (1.0 - final_scale) * 0.5 * (1.0 + math.cos(math.pi * progress))


@LRSchedulerConfig.register_subclass("defi_tristage")
@dataclass
class TriStageSchedulerConfig(LRSchedulerConfig):
    """Warm-up 2 % (1e-5 -> 1e-4 for a 1e-4 peak), hold 8 %, cosine to 1e-10 over the remaining 90 %.

    The phases are fractions of the run length that ``lerobot-train`` passes (``--steps``).
    """

    num_warmup_steps: int | None = None  # unused: the warm-up is `warmup_fraction` of the run
    warmup_fraction: float = 0.02
    hold_fraction: float = 0.08
    initial_scale: float = 0.1
    final_scale: float = 1e-6

    def build(self, optimizer: Optimizer, num_training_steps: int) -> LambdaLR:
        def factor(step: int) -> float:
            return tristage_factor(
                step,
                num_training_steps,
                self.warmup_fraction,
                self.hold_fraction,
                self.initial_scale,
                self.final_scale,
            )

        return LambdaLR(optimizer, factor)
