from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unimedvl.assets import SAMPLE_CORPUS_CONFIG
from unimedvl.data.pipeline import BuildConfig, build_corpus



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
