"""Helpers shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from unimedvl.assets import REFERENCE_TINY

REPO = Path(__file__).resolve().parents[2]


def write_recipe(folder: Path, corpus: Path, **overrides) -> Path:  # noqa: ANN003
    recipe = {
        "stage": "test", "model": {"checkpoint": str(REFERENCE_TINY)},
        "data": {"corpus": str(corpus), "mix": {"understanding": 0.5, "generation": 0.3, "interleaved": 0.2},
                 "tokens_per_pack": 160, "max_tokens_per_sample": 200, "packs_per_step": 4},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9},
        "total_steps": 6, "save_every": 2, "output_dir": str(folder / "run"),
    }
    for key, value in overrides.items():
        node = recipe
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
