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


LR_UNSET = -1.0  # optimizer.lr's "unset" value: the lr is then blr * batch_size / 256


def check_learning_rates(opt_cfg) -> None:
    """ConfigError unless every learning rate is a finite number in its domain: optimizer.lr
    > 0, or -1 (LR_UNSET: taken from blr); optimizer.blr >= 0 (0: the weights never move, a
    baseline); optimizer.min_lr >= 0. Checked before any work starts."""
    from mimjax.schema import fail

    lr, blr, min_lr = opt_cfg.lr, opt_cfg.blr, opt_cfg.min_lr
    for key, value in (("lr", lr), ("blr", blr), ("min_lr", min_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(f"optimizer.{key}", value, "a finite number" + (f" (> 0, or {LR_UNSET} for unset: "
                                                                 f"blr * batch_size / 256)" if key == "lr" else ""))
    if not (lr > 0 or lr == LR_UNSET):
        fail("optimizer.lr", lr, f"a learning rate > 0, or {LR_UNSET} (unset: blr * batch_size / 256 is used)")
    if blr < 0:
        fail("optimizer.blr", blr, "a base learning rate >= 0 (lr = blr * batch_size / 256; 0 leaves the weights "
             "unchanged)")
    if min_lr < 0:
        fail("optimizer.min_lr", min_lr, "a learning rate >= 0")


def learning_rate(opt_cfg, batch_size: int) -> float:
    """The peak lr: optimizer.lr when set (> 0), else blr * batch_size / 256."""
    return opt_cfg.lr if opt_cfg.lr > 0 else opt_cfg.blr * batch_size / 256


def describe_learning_rate(opt_cfg, batch_size: int) -> str:
    """The lr in use and where it comes from, for the start-of-run log line."""
    lr = learning_rate(opt_cfg, batch_size)
    if opt_cfg.lr > 0:
        return f"lr {lr:.4g} (optimizer.lr)"
    return (f"lr {lr:.4g} (optimizer.blr {opt_cfg.blr:.4g} x batch {batch_size} / 256; optimizer.lr = "
            f"{LR_UNSET:g}, unset)")


def lr_schedule(opt_cfg, batch_size: int, total_steps: int, warmup_steps: int):
    """MAE's `adjust_learning_rate`, evaluated per step: step -> lr (jit-friendly). It is
    optax's warm-up + cosine: lr * s / warmup during the warm-up, then
    min_lr + (lr - min_lr) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2."""
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate(opt_cfg, batch_size), warmup_steps,
                                              max(total_steps, warmup_steps + 1), opt_cfg.min_lr)
