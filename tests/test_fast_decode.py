"""Decoding's compiled matrix-vector product and the int8 weight-only layer (issue 14)."""

from __future__ import annotations

import torch

from unimedvl.model.layers import Int8Linear, Linear, fast_matvec, quantize_linears


def test_the_compiled_matvec_equals_blas_for_fp32_and_bf16_weights() -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(1, 1024), torch.randn(1536, 1024) * 0.02, torch.randn(1536)
    with torch.no_grad():
        for w in (weight, weight.to(torch.bfloat16)):
            fast = fast_matvec(x, w, bias)
            assert fast is not None
            expected = torch.nn.functional.linear(x, w.float(), bias)
            assert torch.allclose(fast, expected, atol=1e-5, rtol=1e-5)
        assert fast_matvec(torch.randn(2, 1024), weight) is None  # more than one row: BLAS
        assert fast_matvec(x, torch.randn(8, 1024)) is None  # a small matrix: BLAS
    assert fast_matvec(x, weight) is None  # with gradients: eager autograd


def test_int8_layer_quantizes_per_row_and_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    dense = Linear(1024, 2048, bias=True)
    quant = Int8Linear(1024, 2048, bias=True)
    with torch.no_grad():
        quant.load_weight(dense.weight.to(torch.bfloat16), torch.device("cpu"), rows_per_chunk=300)
        quant.bias.copy_(dense.bias)
        assert quant.weight.dtype == torch.int8 and quant.weight.abs().max() == 127
        for rows in (1, 5):  # decoding (compiled) and a block (widened per call)
            x = torch.randn(rows, 1024)
            ref, out = dense(x), quant(x)
            assert (out - ref).norm() / ref.norm() < 0.01


def test_quantize_linears_swaps_only_the_selected_layers() -> None:
    model = torch.nn.Sequential(Linear(4, 4), torch.nn.Sequential(Linear(4, 4)), torch.nn.Linear(4, 4))
    assert quantize_linears(model, lambda name: name != "0") == 1
    assert isinstance(model[0], Linear) and isinstance(model[1][0], Int8Linear)
    assert isinstance(model[2], torch.nn.Linear)  # not ours: left alone
