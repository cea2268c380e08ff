from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from unimedvl.assets import REFERENCE_TINY, SAMPLE_CORPUS_CONFIG, SAMPLES
from unimedvl.data.pipeline import BuildConfig, build_corpus
from unimedvl.inference.engine import UniMedVL

FIXTURE = Path(__file__).parent / "fixtures" / "reference-tiny"
CHECKPOINT_FILES = ("llm_config.json", "vit_config.json", "vae_config.json", "ae.safetensors", "ema.safetensors",
                    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert FIXTURE.resolve() == REFERENCE_TINY.resolve()
    return FIXTURE


@pytest.fixture(scope="session")
def engine(fixture_dir: Path) -> UniMedVL:
    return UniMedVL.from_pretrained(fixture_dir)


@pytest.fixture()
def checkpoint_copy(tmp_path: Path, fixture_dir: Path) -> Path:
    """A writable copy of the tiny checkpoint (without the golden cases)."""
    out = tmp_path / "ckpt"
    out.mkdir()
    for name in CHECKPOINT_FILES:
        shutil.copy(fixture_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def cxr_path() -> Path:
    return SAMPLES / "chest_xray_nih.png"


@pytest.fixture(scope="session")
def mri_path() -> Path:
    return SAMPLES / "brain_mri_msd.png"


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
