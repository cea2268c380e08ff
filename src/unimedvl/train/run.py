"""Run one curriculum stage from a recipe: what `unimedvl train` and `python -m unimedvl.train` both call."""

from __future__ import annotations

from pathlib import Path

from unimedvl.train.config import TrainConfig
from unimedvl.train.trainer import Trainer


def run_recipe(recipe: str | Path, overrides: list[str] | None = None, *, export: str | Path | None = None
               ) -> list[dict[str, float]]:
    """Train (or resume) the stage a recipe describes; export the released layout when asked. Returns the loss history."""
    trainer = Trainer(TrainConfig.from_yaml(recipe, list(overrides or [])))
    try:
        history = trainer.fit()
        if export is not None:
            trainer.export(export)
    finally:
        trainer.close()
    return history
