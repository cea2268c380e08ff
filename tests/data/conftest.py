from __future__ import annotations

from pathlib import Path

import pytest

from unimedvl.assets import SAMPLE_CORPUS_CONFIG
from unimedvl.data.manifest import Manifest
from unimedvl.data.pipeline import BuildConfig, build_corpus


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("corpus") / "sample"
    manifest = build_corpus(BuildConfig.from_yaml(SAMPLE_CORPUS_CONFIG), out, workers=2, log=lambda m: None)
    return out, manifest
