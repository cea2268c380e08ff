from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from unimedvl.assets import REFERENCE_TINY, SAMPLES
from unimedvl.engine import UniMedVL

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
