"""The proof of compatibility: our loader + engine reproduce the original implementation's outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unimedvl.tools.reference_check import FixtureRunner, main


def test_every_fixture_case_matches_the_reference(fixture_dir: Path) -> None:
    checks = FixtureRunner(fixture_dir).run()
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)
    cases = {c.case for c in checks}
    assert cases == {"case_a", "case_b", "case_c", "case_d", "case_e", "case_f"}
    # Every recorded output tensor of every case was compared.
    meta = json.loads((fixture_dir / "fixture.json").read_text())
    for case, spec in meta["cases"].items():
        for name in spec.get("output_tensors", []):
            assert any(c.case == case and c.name == name for c in checks), f"{case}.{name} not checked"


def test_reference_check_cli_prints_one_line_per_tensor(fixture_dir: Path, capsys) -> None:
    assert main([str(fixture_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].endswith(" 0 failed")
    assert all(line.split()[-1] == "PASS" for line in lines[:-1])
    assert any(line.startswith("case_d") and "step0.v_img_uncond" in line for line in lines)


def _corrupted_copy(fixture_dir: Path, tmp_path: Path, case_file: str, tensor: str, delta: float) -> Path:
    out = tmp_path / "fixture"
    shutil.copytree(fixture_dir, out)
    tensors = load_file(str(out / case_file))
    tensors[tensor] = tensors[tensor] + delta
    save_file(tensors, str(out / case_file))
    return out


def test_reference_check_fails_on_a_wrong_golden_value(fixture_dir: Path, tmp_path: Path, capsys) -> None:
    bad = _corrupted_copy(fixture_dir, tmp_path, "case_d_edit.safetensors", "step2.v", 1e-3)
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "step2.v" in out and "FAIL" in out and " 1 failed" in out


def test_reference_check_detects_a_routing_mistake(fixture_dir: Path, tmp_path: Path, capsys) -> None:
    # Swap the two experts' MLP of layer 0: understanding outputs must then fail.
    out = tmp_path / "fixture"
    shutil.copytree(fixture_dir, out)
    weights = load_file(str(out / "ema.safetensors"))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        a, b = f"language_model.model.layers.0.mlp.{proj}.weight", f"language_model.model.layers.0.mlp_moe_gen.{proj}.weight"
        weights[a], weights[b] = weights[b].clone(), weights[a].clone()
    save_file(weights, str(out / "ema.safetensors"))
    assert main([str(out)]) == 1
    assert "prefill_text_logits" in capsys.readouterr().out


def test_reference_check_reports_an_unreadable_folder(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "fixture.json" in capsys.readouterr().err


def test_bf16_weights_fp32_compute_stays_close(fixture_dir: Path) -> None:
    # The fixture stores bf16 weights; loading them as bf16 storage (CPU computes in fp32) is exact.
    from unimedvl.inference.engine import UniMedVL

    fp32 = UniMedVL.from_pretrained(fixture_dir, dtype="float32")
    bf16 = UniMedVL.from_pretrained(fixture_dir, dtype="bfloat16")
    assert bf16.model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert bf16.model.compute_dtype == torch.float32
    prompt = torch.tensor(fp32.tokenizer.frame("Axial CT of the abdomen."))
    a = fp32.model.logits(fp32.model.prefill_text(fp32.model.new_cache(), prompt))
    b = bf16.model.logits(bf16.model.prefill_text(bf16.model.new_cache(), prompt))
    assert torch.allclose(a, b, atol=1e-5)
