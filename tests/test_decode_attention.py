"""Decoding's attention on CPU (issue 14): the built kernel gives SDPA's answer, serves long decodes, falls back."""

from __future__ import annotations

import warnings

import pytest
import torch

from unimedvl.config import UnifiedConfig
from unimedvl.model.builder import build_model
from unimedvl.model.decode_attention import DECODE_ATTENTION, MIN_KEYS, DecodeAttention, sdpa_decode
from unimedvl.model.matvec import MatvecKernels


@pytest.fixture(scope="module")
def kernel() -> DecodeAttention:
    """The process's kernel, built (once per machine: ~30 s the first time, then loaded from torch's cache)."""
    assert DECODE_ATTENTION.ensure_built(), "the decoding-attention kernel did not build on this machine"
    return DECODE_ATTENTION


@pytest.mark.parametrize(("heads", "kv_heads", "dim", "keys"), [
    (16, 4, 64, 1), (16, 4, 64, 255), (16, 4, 64, 256), (16, 4, 64, 257), (16, 4, 64, 4100),
    (4, 2, 48, 1500), (28, 4, 128, 1030), (8, 8, 16, 700), (6, 1, 32, 300), (12, 4, 80, 513),
])
def test_the_kernel_gives_sdpas_answer(kernel: DecodeAttention, heads: int, kv_heads: int, dim: int, keys: int) -> None:
    g = torch.Generator().manual_seed(keys)
    q = torch.randn(heads, dim, generator=g) * 2
    # Views of a cache with room past its end, as KVStore holds them: rows contiguous, heads `capacity` apart.
    k = (torch.randn(kv_heads, keys + 37, dim, generator=g) * 2)[:, :keys]
    v = torch.randn(kv_heads, keys + 37, dim, generator=g)[:, :keys]
    out = kernel.module.decode_attention(q, k, v, dim ** -0.5)
    torch.testing.assert_close(out, sdpa_decode(q, k, v), atol=2e-6, rtol=1e-5)


def test_a_long_decode_uses_it_and_agrees_with_sdpa(kernel: DecodeAttention) -> None:
    torch.manual_seed(0)
    model = build_model(UnifiedConfig.tiny(), device="cpu").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, model.config.llm.vocab_size, (MIN_KEYS + 40,), generator=torch.Generator().manual_seed(1))
    calls = []
    module = kernel.module

    class Counting:
        def decode_attention(self, *args):  # noqa: ANN002, ANN202
            calls.append(args[1].shape[1])
            return module.decode_attention(*args)

    kernel.module = Counting()
    modes = kernel.kernels.mode
    try:
        kernel.kernels.mode = "1"
        with torch.no_grad():
            cache = model.new_cache()
            model.prefill_text(cache, ids)
            ours, sdpa = cache.fork(), cache.fork()
            token = ids[-1:]
            logits = model.decode_step(ours, token)
            kernel.off = True
            reference = model.decode_step(sdpa, token)
    finally:
        kernel.module, kernel.kernels.mode, kernel.off = module, modes, False
    assert calls == [MIN_KEYS + 41] * model.config.llm.num_hidden_layers  # every layer's decoding row, once
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


def test_short_caches_and_other_dtypes_stay_on_sdpa(kernel: DecodeAttention) -> None:
    q = torch.randn(16, 64)
    with torch.no_grad():
        assert kernel.applies(q, torch.randn(4, MIN_KEYS, 64))
        assert not kernel.applies(q, torch.randn(4, MIN_KEYS - 1, 64))  # too short to pay
        assert not kernel.applies(q.bfloat16(), torch.randn(4, MIN_KEYS, 64).bfloat16())
        assert not kernel.applies(torch.randn(16, 24), torch.randn(4, MIN_KEYS, 24))  # a head size not compiled in
    assert not kernel.applies(q, torch.randn(4, MIN_KEYS, 64))  # with autograd on (training): SDPA


def test_a_failed_build_warns_once_and_sdpa_serves() -> None:
    builds = []

    def broken():  # noqa: ANN202
        builds.append(1)
        raise OSError("no compiler here")

    attention = DecodeAttention(MatvecKernels("1"), builder=broken)
    q, k, v = torch.randn(8, 64), torch.randn(2, MIN_KEYS, 64), torch.randn(2, MIN_KEYS, 64)
    with torch.no_grad():
        with pytest.warns(UserWarning, match="kernel unavailable .*no compiler here.*using SDPA"):
            out = attention(q, k, v)
        torch.testing.assert_close(out, sdpa_decode(q, k, v), atol=0, rtol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            attention(q, k, v)  # no second build, no second warning
    assert builds == [1] and attention.unavailable


def test_fast_decode_0_never_builds_and_auto_times_both(kernel: DecodeAttention) -> None:
    def never():  # noqa: ANN202
        raise AssertionError("built although UNIMEDVL_FAST_DECODE=0")

    q, k, v = torch.randn(8, 64), torch.randn(2, 2 * MIN_KEYS, 64), torch.randn(2, 2 * MIN_KEYS, 64)
    off = DecodeAttention(MatvecKernels("0"), builder=never)
    with torch.no_grad():
        torch.testing.assert_close(off(q, k, v), sdpa_decode(q, k, v), atol=0, rtol=0)
    auto = DecodeAttention(MatvecKernels("auto"), builder=lambda: kernel.module)
    with torch.no_grad():
        for _ in range(12):  # a warm-up call, then the two alternate until each has run TRIALS times
            torch.testing.assert_close(auto(q, k, v), sdpa_decode(q, k, v), atol=2e-6, rtol=1e-5)
    assert list(auto.choices()) == ["8/2 heads of 64, 2048+ keys"] and set(auto.choices().values()) <= {"sdpa", "kernel"}


def test_non_finite_values_propagate_as_sdpas_do(kernel: DecodeAttention) -> None:
    # Built with -ffast-math (for vector exp): a NaN or inf must still reach the same heads as through SDPA.
    q, k, v = torch.randn(16, 64), torch.randn(4, 2000, 64), torch.randn(4, 2000, 64)
    q_nan, k_nan, v_inf, k_huge = q.clone(), k.clone(), v.clone(), k.clone()
    q_nan[3, 5] = float("nan")
    k_nan[1, 700, 3] = float("nan")
    v_inf[2, 10, 0] = float("inf")
    k_huge[0, 5, 0] = 1e30
    for args in ((q_nan, k, v), (q, k_nan, v), (q, k, v_inf), (q, k_huge, v)):
        out, reference = kernel.module.decode_attention(*args, 0.125), sdpa_decode(*args)
        assert torch.equal(torch.isnan(out), torch.isnan(reference))
        assert torch.equal(torch.isinf(out), torch.isinf(reference))
        finite = torch.isfinite(reference)
        torch.testing.assert_close(out[finite], reference[finite], atol=2e-6, rtol=1e-5)


def test_a_lock_left_by_a_killed_build_is_cleared_a_live_one_is_not(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import os
    import time

    from torch.utils import cpp_extension

    from unimedvl.model import decode_attention

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "unimedvl_decode_attention_x" / "lock"
    lock.parent.mkdir()
    lock.write_text("")
    decode_attention._clear_stale_lock("unimedvl_decode_attention_x")
    assert lock.exists()  # a build may be running right now: torch's builder waits for it
    old = time.time() - decode_attention.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    seen = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.append((kw["name"], lock.exists())) or "module")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "X")
    assert decode_attention.build_kernel() == "module"
    assert seen == [("unimedvl_decode_attention_x", False)]  # the stale lock was gone before torch looked


def test_the_server_builds_the_kernel_beside_startup(engine, monkeypatch) -> None:  # noqa: ANN001
    import threading

    import uvicorn

    from unimedvl.serve import run
    from unimedvl.serve.settings import ServerSettings

    built = threading.Event()
    monkeypatch.setattr(DECODE_ATTENTION, "ensure_built", built.set)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    threads = torch.get_num_threads()
    try:
        run.serve(engine, ServerSettings())
    finally:
        torch.set_num_threads(threads)
    assert built.wait(10), "serve did not start building the decoding-attention kernel"
