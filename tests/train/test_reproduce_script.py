"""The UniMedVL-tiny reproduction script, end to end at a tiny scale: two runs give identical files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import REPO

from unimedvl.assets import SAMPLE_CORPUS_CONFIG

FILES = ("ema.safetensors", "ae.safetensors", "tokenizer.json", "llm_config.json", "vae_config.json", "image_config.json")


def _run(out: Path, corpus_config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts/train_unimedvl_tiny.py"), "--out", str(out),
                           "--corpus-config", str(corpus_config), "--scale", "0.002", "--vae-steps", "5000", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_runs_are_identical_and_check_reports_differences(tmp_path: Path) -> None:
    data = SAMPLE_CORPUS_CONFIG.parent
    config = {"name": "repro", "seed": 0, "deid_salt": "x", "chunk_size": 200,
              "sources": [{"name": "pneumonia", "adapter": "medmnist", "path": str(data / "medmnist/pneumoniamnist_no_test.npz"),
                           "modality": "chest_xray", "licence": "CC-BY-4.0", "limit": 150,
                           "tasks": ["vqa", "caption", "text_to_image"],
                           "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"}}},
                          {"name": "msd", "adapter": "image_table", "path": str(data / "msd-nih-slices"),
                           "licence": "CC-BY-SA-4.0", "tasks": ["vqa", "caption", "text_to_image"],
                           "options": {"table": "labels.csv"}}]}
    corpus_config = tmp_path / "corpus.yaml"
    corpus_config.write_text(yaml.safe_dump(config))
    first = _run(tmp_path / "a", corpus_config)
    assert first.returncode == 0, first.stderr[-2000:]
    # The second run is compared with the shipped model: a 0.2 % run differs from it, and says so.
    second = _run(tmp_path / "b", corpus_config, "--check")
    assert second.returncode == 1, second.stderr[-2000:]
    assert "ema.safetensors: DIFFERS" in second.stderr
    for name in FILES:
        a, b = (hashlib.sha256((tmp_path / run / "model" / name).read_bytes()).hexdigest() for run in ("a", "b"))
        assert a == b, f"{name} differs between two runs of the same command"
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["threads"] >= 1 and run["seconds"] > 0 and "stage3-unified" in run["phases"]
