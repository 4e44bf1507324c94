"""How long a run is and how fast it learns: durations resolved from epochs (`Schedule`,
also the GPA masking progress t) and MAE's learning rate, lr = blr * batch / 256 with a
linear warm-up then a half-cosine, evaluated per step."""
from __future__ import annotations

import dataclasses
import math

import optax


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Durations in steps, resolved from epochs where the config gives epochs."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    total_epochs: float

    @classmethod
    def from_config(cls, c, num_examples: int):
        spe = max(num_examples // c.batch_size, 1)
        total = c.total_steps if c.total_steps > 0 else c.total_epochs * spe
        warm = c.optimizer.warmup_steps if c.optimizer.warmup_steps >= 0 else c.optimizer.warmup_epochs * spe
        return cls(spe, int(total), int(min(warm, total)), total / spe)

    def progress(self, step, mode: str):
        """Masking progress t in [0, 1]: epoch / epochs (authors) or step / total_steps."""
        if mode == "epoch":
            return (step // self.steps_per_epoch) / max(math.ceil(self.total_epochs), 1)
        return step / self.total_steps


def learning_rate(opt_cfg, batch_size: int) -> float:
    return opt_cfg.lr if opt_cfg.lr > 0 else opt_cfg.blr * batch_size / 256


def lr_schedule(opt_cfg, batch_size: int, total_steps: int, warmup_steps: int):
    """MAE's `adjust_learning_rate`, evaluated per step: step -> lr (jit-friendly). It is
    optax's warm-up + cosine: lr * s / warmup during the warm-up, then
    min_lr + (lr - min_lr) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2."""
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate(opt_cfg, batch_size), warmup_steps,
                                              max(total_steps, warmup_steps + 1), opt_cfg.min_lr)
