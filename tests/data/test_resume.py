"""Killing a build mid-way and running it again gives the same manifest as an uninterrupted build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
