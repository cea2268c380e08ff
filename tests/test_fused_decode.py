"""One decoding row through a layer as two compiled graphs (model/decode_layer.py, issue 14)."""

from __future__ import annotations

import torch

from unimedvl.config import LLMConfig, UnifiedConfig
from unimedvl.model.builder import build_model
from unimedvl.model.decode_layer import FUSED, layer_weights
from unimedvl.model.layers import Int8Linear, quantize_linears
from unimedvl.model.matvec import TRIALS, MatvecKernels


def _model(seed: int = 0):  # noqa: ANN202
    """Layers just big enough to be fused (MLP matrices of 1 M weights), one expert exercised at a time."""
    torch.manual_seed(seed)
    base = UnifiedConfig.tiny()
    llm = LLMConfig(vocab_size=base.llm.vocab_size, hidden_size=512, intermediate_size=2048, num_hidden_layers=2,
                    num_attention_heads=8, num_key_value_heads=2)
    model = build_model(UnifiedConfig(llm=llm, vit=base.vit, vae=base.vae), device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                torch.nn.init.normal_(p, std=0.05)
            else:
                p.uniform_(0.5, 1.5)  # not ones: a norm weight dropped or misplaced would show
    return model.eval()


def _decode(model, steps: int = 6) -> tuple[torch.Tensor, list[int]]:  # noqa: ANN001
    """Logits of every step after a 5-token prompt, and the greedy tokens."""
    ids = torch.tensor([1, 5, 9, 2, 7])
    with torch.no_grad():
        cache = model.new_cache(capacity=16)
        logits = [model.logits(model.prefill_text(cache, ids))[-1:]]
        tokens = []
        for _ in range(steps):
            token = logits[-1].argmax(-1)
            tokens.append(int(token))
            logits.append(model.decode_step(cache, token))
    return torch.cat(logits), tokens


def _with_mode(mode: str):  # noqa: ANN202
    saved = FUSED.kernels, FUSED.choice, FUSED.trials
    FUSED.kernels, FUSED.choice, FUSED.trials = MatvecKernels(mode), {}, {}
    return saved


def _restore(saved) -> None:  # noqa: ANN001
    FUSED.kernels, FUSED.choice, FUSED.trials = saved


def test_compiled_layer_decodes_like_the_eager_layer_fp32_bf16_and_int8() -> None:
    model = _model()
    saved = _with_mode("0")
    try:
        eager, eager_tokens = _decode(model)
        FUSED.kernels = MatvecKernels("1")
        fused, fused_tokens = _decode(model)
        assert FUSED.graphs is not None
        assert fused_tokens == eager_tokens
        assert torch.allclose(fused, eager, atol=1e-4, rtol=1e-4)
        assert not torch.equal(fused[1:], eager[1:])  # the compiled graphs really ran (another summation order)
        for convert in ("bf16", "int8"):
            other = _model()
            if convert == "bf16":
                for module in other.language_model.model.layers:
                    module.to(torch.bfloat16)
                    for norm in (m for n, m in module.named_modules() if n.endswith("norm") or "norm_moe" in n):
                        norm.float()
            else:
                weights = {n: m.weight.detach().clone() for n, m in other.language_model.model.layers.named_modules()
                           if hasattr(m, "weight") and n.split(".")[-1].endswith(("proj", "proj_moe_gen"))}
                biases = {n: m.bias for n, m in other.language_model.model.layers.named_modules() if n in weights}
                quantize_linears(other.language_model.model.layers, lambda name: True)
                for n, m in other.language_model.model.layers.named_modules():
                    if isinstance(m, Int8Linear):
                        m.load_weight(weights[n], torch.device("cpu"))
                        if biases[n] is not None:
                            m.bias = biases[n]
            FUSED.kernels = MatvecKernels("0")
            plain, _ = _decode(other)
            FUSED.kernels = MatvecKernels("1")
            compiled, _ = _decode(other)
            assert torch.allclose(compiled, plain, atol=1e-3, rtol=1e-3), convert
            assert (plain - eager).abs().max() > 0  # the narrower weights are really in use
    finally:
        _restore(saved)


def test_auto_mode_times_each_layer_shape_then_keeps_one() -> None:
    model = _model(1)
    saved = _with_mode("auto")
    try:
        _decode(model, steps=1 + TRIALS)  # every step: each layer's shape is met twice per step (two layers)
        assert set(FUSED.choices()) == {"understanding 512x2048 float32"}
        assert FUSED.choices()["understanding 512x2048 float32"] in {"eager", "compiled"}
        assert FUSED.trials == {}
    finally:
        _restore(saved)


def test_blocks_small_layers_gradients_and_fbgemm_int8_stay_eager(monkeypatch) -> None:  # noqa: ANN001
    calls = []
    monkeypatch.setattr(FUSED, "_compiled", lambda layer, x, inputs, weights, eager: calls.append(1) or eager(x))
    monkeypatch.setattr(FUSED, "kernels", MatvecKernels("1"))
    small = build_model(UnifiedConfig.tiny(), device="cpu").eval()
    layer = small.language_model.model.layers[0]
    assert layer_weights(layer, gen=False) is not None  # fusable, but below the size where it pays
    _decode(small, steps=2)
    big = _model(2)
    with torch.enable_grad():  # training and gradients: never the compiled graphs
        out = big.logits(big.prefill_text(big.new_cache(capacity=4), torch.tensor([3])))
        assert out.requires_grad
    with torch.no_grad():  # a block of several rows (a prompt): eager
        big.prefill_text(big.new_cache(capacity=4), torch.tensor([3, 4]))
    assert calls == []
    with torch.no_grad():  # the same model, one row: compiled (here a counting stand-in), in both layers
        big.prefill_text(big.new_cache(capacity=4), torch.tensor([3]))
    assert calls == [1, 1]
    from unimedvl.model.layers import Int8DynamicLinear

    quantize_linears(layer, lambda name: name == "mlp.gate_proj", Int8DynamicLinear)
    assert layer_weights(layer, gen=False) is None and layer_weights(layer, gen=True) is not None


def test_a_platform_that_cannot_compile_falls_back_to_the_eager_layer_with_a_warning() -> None:
    import pytest

    model = _model(3)
    saved = _with_mode("0")
    try:
        expected, tokens = _decode(model, steps=2)

        def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("no C++ compiler")

        FUSED.kernels = MatvecKernels("1")
        graphs, FUSED.graphs = FUSED.graphs, (broken, broken)
        try:
            with pytest.warns(UserWarning, match="compiled decoding unavailable"):
                got, got_tokens = _decode(model, steps=2)
        finally:
            FUSED.graphs = graphs
        assert FUSED.kernels.unavailable and got_tokens == tokens
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    finally:
        _restore(saved)
