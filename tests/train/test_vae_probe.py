"""scripts/vae_probe.py: the VAE trained further, with the SR ceilings of `unimedvl eval edits` before and during."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vae_probe.py"


def test_the_probe_trains_the_shipped_vae_and_reports_ceilings_per_modality(train_corpus: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(train_corpus), "--steps", "4", "--evals", "2",
                           "--size", "32", "--batch", "2", "--lr", "1e-2", "--per-modality", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in records] == [0, 2, 4]
    first, last = records[0]["ceilings"], records[-1]["ceilings"]
    assert set(first) == set(last) and first  # the held-out super-resolution pairs, grouped by modality
    for modality, row in first.items():
        assert 0 < row["n"] <= 2 and 0 <= row["residual_above"] <= row["n"]
        assert row["bicubic"] == last[modality]["bicubic"]  # the baseline does not depend on the VAE
        assert row["round_trip"] != last[modality]["round_trip"]  # training moved the VAE
    assert "| modality | n | round trip |" in done.stdout
