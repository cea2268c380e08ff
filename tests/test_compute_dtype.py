"""What a CPU computes in: fp32 by default, bf16 on request or where the CPU has bf16 matrix units (issue 14)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from unimedvl.checkpoint import folder as checkpoint_folder
from unimedvl.checkpoint.folder import AUTO_BF16_MIN_HIDDEN, resolve_compute
from unimedvl.cli import main
from unimedvl.errors import ConfigError
from unimedvl.eval.metrics.image import psnr
from unimedvl.inference.engine import UniMedVL
from unimedvl.model.sampling import GuidanceOptions

CPU = torch.device("cpu")
BIG, SMALL = AUTO_BF16_MIN_HIDDEN, 64


def test_the_default_is_fp32_compute_whatever_the_storage() -> None:
    assert resolve_compute(None, None, CPU, BIG) == (torch.float32, torch.float32)
    assert resolve_compute(None, "bfloat16", CPU, BIG) == (torch.bfloat16, torch.float32)
    assert resolve_compute("float32", "bfloat16", CPU, BIG) == (torch.bfloat16, torch.float32)


def test_bf16_compute_keeps_bf16_weights_and_refuses_fp32_ones() -> None:
    assert resolve_compute("bfloat16", None, CPU, SMALL) == (torch.bfloat16, torch.bfloat16)
    with pytest.raises(ConfigError, match="cast at every call"):
        resolve_compute("bfloat16", "float32", CPU, BIG)
    with pytest.raises(ConfigError, match="unknown compute dtype 'fp8'"):
        resolve_compute("fp8", None, CPU, BIG)


def test_auto_takes_bf16_only_with_matrix_units_and_a_model_large_enough(monkeypatch) -> None:
    monkeypatch.setattr(checkpoint_folder, "cpu_has_amx", lambda: True)
    assert resolve_compute("auto", None, CPU, BIG) == (torch.bfloat16, torch.bfloat16)
    assert resolve_compute("auto", None, CPU, SMALL) == (torch.float32, torch.float32)
    monkeypatch.setattr(checkpoint_folder, "cpu_has_amx", lambda: False)
    assert resolve_compute("auto", None, CPU, BIG) == (torch.float32, torch.float32)


def test_bf16_on_a_cpu_without_matrix_units_warns(monkeypatch, caplog) -> None:
    monkeypatch.setattr(checkpoint_folder, "cpu_has_amx", lambda: False)
    with caplog.at_level(logging.WARNING):
        resolve_compute("bfloat16", None, CPU, BIG)
    assert "far slower than float32" in caplog.text


def test_on_gpu_the_weight_dtype_is_the_compute_dtype() -> None:
    cuda = torch.device("cuda")  # only resolved, never allocated on
    assert resolve_compute(None, None, cuda, BIG) == (torch.bfloat16, torch.bfloat16)
    assert resolve_compute("auto", "float32", cuda, BIG) == (torch.float32, torch.float32)
    with pytest.raises(ConfigError, match="computes in its weight dtype"):
        resolve_compute("float32", None, cuda, BIG)


def test_a_bf16_load_computes_in_bf16_and_stays_close_to_fp32(fixture_dir: Path, cxr_path: Path) -> None:
    fp32 = UniMedVL.from_pretrained(fixture_dir)
    bf16 = UniMedVL.from_pretrained(fixture_dir, compute="bfloat16")
    assert fp32.model.compute_dtype == torch.float32
    assert bf16.model.compute_dtype == torch.bfloat16
    assert bf16.model.language_model.lm_head.weight.dtype == torch.bfloat16
    assert next(fp32.vae.parameters()).dtype == torch.float32  # the VAE computes in the compute dtype too
    assert next(bf16.vae.parameters()).dtype == torch.bfloat16
    logits = []
    for model in (fp32, bf16):
        context = model.new_context()
        model.add_text(context, "Describe this chest X-ray.")
        logits.append(model.model.decode_step(context, torch.tensor([model.special.bos])).float())
    assert logits[1].dtype == torch.float32 and not torch.equal(logits[0], logits[1])  # really another dtype
    assert (logits[0] - logits[1]).norm() / logits[0].norm() < 0.05
    images = [np.asarray(model.generate("A chest X-ray.", height=32, width=32, seed=0,
                                        guidance=GuidanceOptions(num_timesteps=3))) for model in (fp32, bf16)]
    assert images[1].shape == images[0].shape and psnr(images[1], images[0]) > 30
    assert bf16.ask([cxr_path], "What imaging modality is this?", max_new_tokens=4).token_ids


def test_the_cli_refuses_an_unknown_compute_dtype(capsys, cxr_path: Path) -> None:
    assert main(["ask", str(cxr_path), "-q", "Modality?", "--compute", "fp8"]) == 2
    assert "unknown compute dtype 'fp8'" in capsys.readouterr().err
