"""Decoding's matrix-vector kernels (BLAS or compiled, measured per shape) and the int8 weight-only layer (issue 14)."""

from __future__ import annotations

import pytest
import torch

from unimedvl.model.layers import Int8DynamicLinear, Int8Linear, Linear, pack_int8_dynamic, quantize_linears
from unimedvl.model.matvec import TRIALS, MatvecKernels, blas_matvec


def test_both_decoding_kernels_equal_blas_for_fp32_bf16_and_int8_weights() -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(1, 1024), torch.randn(1536, 1024) * 0.02, torch.randn(1536)
    scale = torch.rand(1536) + 0.5
    compiled = MatvecKernels("1")
    with torch.no_grad():
        for w, s in ((weight, None), (weight.to(torch.bfloat16), None), ((weight * 100).to(torch.int8), scale)):
            expected = torch.nn.functional.linear(x, w.float(), None if s is not None else bias)
            if s is not None:
                expected = expected * s + bias
            assert torch.allclose(compiled(x, w, bias, s), expected, atol=1e-4, rtol=1e-5)
            assert torch.equal(blas_matvec(x, w, bias, s), expected)
        assert compiled.compiled is not None


def test_auto_mode_times_each_shape_on_its_first_calls_then_keeps_one_kernel() -> None:
    torch.manual_seed(0)
    kernels = MatvecKernels("auto")
    x, weight = torch.randn(1, 1024), torch.randn(1536, 1024)
    expected = torch.nn.functional.linear(x, weight)
    with torch.no_grad():
        for call in range(1 + 2 * TRIALS):  # a warm-up (compiles, untimed), then the kernels in turn
            assert kernels.choices() == {}
            assert torch.allclose(kernels(x, weight), expected, atol=1e-4, rtol=1e-5)
        assert set(kernels.choices()) == {"1536x1024 float32"}
        assert kernels.choices()["1536x1024 float32"] in {"blas", "compiled"}
        kernels(x, weight.to(torch.bfloat16))  # a narrower weight: the compiled loop, never a widened copy
        kernels(x, (weight * 10).to(torch.int8), None, torch.ones(1536))
        assert kernels.trials == {} and len(kernels.choices()) == 1
        # Not measured: several rows, a small matrix, gradients, an explicit mode.
        for args in ((torch.randn(2, 1024), weight), (x, torch.randn(8, 1024))):
            assert torch.equal(kernels(*args), blas_matvec(*args, None, None))
    with torch.enable_grad():
        assert torch.equal(kernels(x, weight), blas_matvec(x, weight, None, None))
    never = MatvecKernels("0")
    with torch.no_grad():
        never(x, weight)
    assert never.compiled is None and never.trials == {}
    with pytest.raises(ValueError, match="UNIMEDVL_FAST_DECODE"):
        MatvecKernels("fast")


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


def test_int8_dynamic_layer_packs_for_fbgemm_and_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    dense = Linear(1024, 2048, bias=True)
    weight_only, dynamic = Int8Linear(1024, 2048, bias=True), Int8DynamicLinear(1024, 2048, bias=True)
    with torch.no_grad():
        for layer in (weight_only, dynamic):
            layer.load_weight(dense.weight, torch.device("cpu"))
            layer.bias.copy_(dense.bias)
        x = torch.randn(5, 1024)
        assert torch.equal(dynamic(x), weight_only(x))  # not packed yet: the weight-only path
        assert pack_int8_dynamic(torch.nn.Sequential(dynamic, weight_only)) == 1
        assert dynamic.weight.numel() == 0  # FBGEMM holds the only copy
        for rows in (1, 5):
            x = torch.randn(rows, 1024)
            ref, out = dense(x), dynamic(x)
            assert out.shape == ref.shape and out.dtype == torch.float32
            assert not torch.equal(out, weight_only(x))  # activations are quantized too
            assert (out - ref).norm() / ref.norm() < 0.03
        assert dynamic(torch.randn(2, 3, 1024)).shape == (2, 3, 2048)
