"""Learning-rate schedules: linear warmup, then cosine decay to a floor (or constant)."""

from __future__ import annotations

import math


def cosine_factor(progress: float, min_ratio: float = 0.0) -> float:
    """Cosine decay from 1 (progress 0) to `min_ratio` (progress 1)."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """The learning-rate multiplier at `step` (0-based): warmup to 1 over `warmup` steps, then `schedule`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    return cosine_factor(min(1.0, (step - warmup) / max(1, total - warmup)), min_ratio)
