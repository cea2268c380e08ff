"""bench/gpu_check.py on CPU (issue 14, item 5): the CPU half, the device check, and the GPU half's code on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_stops_at_the_device_check_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--config", "tiny", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "CPU reference (tiny preset, fp32)" in run.stdout
    assert "device check: no CUDA device here" in run.stdout and out.read_text().count('"gpu": null') == 1


def test_parity_inputs_are_the_same_weights_and_the_speed_code_runs(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    from unimedvl.config import UnifiedConfig

    config = UnifiedConfig.tiny()
    a = gpu_check.reference_outputs(gpu_check.random_engine(config, "cpu", torch.float32))
    b = gpu_check.reference_outputs(gpu_check.random_engine(config, "cpu", torch.float32))
    assert gpu_check.relative_l2(a["logits"], b["logits"]) == 0 and gpu_check.relative_l2(a["velocity"], b["velocity"]) == 0
    speed = gpu_check.gpu_speed(gpu_check.random_engine(config, "cpu", torch.float32), full_t2i=False)
    assert set(speed) == {"decode_tok_s", "decode_16_tok_s", "t2i_256_s"} and all(v > 0 for v in speed.values())
