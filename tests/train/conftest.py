from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unimedvl.assets import REFERENCE_TINY, SAMPLE_CORPUS_CONFIG
from unimedvl.data.pipeline import BuildConfig, build_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory) -> Path:
    """A small real corpus: 200 PneumoniaMNIST records + the MSD/NIH slices (understanding, generation, interleaved)."""
    folder = tmp_path_factory.mktemp("train-corpus")
    data = SAMPLE_CORPUS_CONFIG.parent
    config = {
        "name": "train-test", "seed": 0, "deid_salt": "x", "chunk_size": 100, "splits": {"train": 0.9, "val": 0.1, "test": 0.0},
        "sources": [
            {"name": "pneumonia", "adapter": "medmnist", "path": str(data / "medmnist/pneumoniamnist_no_test.npz"),
             "modality": "chest_xray", "licence": "CC-BY-4.0", "limit": 200, "tasks": ["vqa", "text_to_image"],
             "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"}, "splits": ["train"]}},
            {"name": "msd", "adapter": "image_table", "path": str(data / "msd-nih-slices"), "licence": "CC-BY-SA-4.0",
             "tasks": ["vqa", "super_resolution"], "options": {"table": "labels.csv"}},
        ],
    }
    (folder / "build.yaml").write_text(yaml.safe_dump(config))
    build_corpus(BuildConfig.from_yaml(folder / "build.yaml"), folder / "corpus", workers=1, log=lambda m: None)
    return folder / "corpus"


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
