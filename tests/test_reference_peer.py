"""bench/reference_worker.py (issue 14): the CPU stand-in for flash-attn the original code runs on, and its fp32 copy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """One segment by the textbook: softmax(q k^T / sqrt(d)) v, kv heads repeated, causal aligned bottom right."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        allowed = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double()).float()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[(5, 5), (3, 3)], [(1, 7), (4, 9), (6, 6)]])
def test_varlen_stand_in_matches_dense_attention_per_segment(monkeypatch, causal: bool, lengths) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    from reference_worker import varlen_attention

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(sum(a for a, _ in lengths), 4, 8, generator=generator)
    k = torch.randn(sum(b for _, b in lengths), 2, 8, generator=generator)
    v = torch.randn(k.shape, generator=generator)
    cu_q = torch.tensor([0] + [sum(a for a, _ in lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    cu_k = torch.tensor([0] + [sum(b for _, b in lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)
    out = varlen_attention(q, k, v, cu_q, cu_k, causal=causal)
    for i in range(len(lengths)):
        q0, q1, k0, k1 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        torch.testing.assert_close(out[q0:q1], dense_attention(q[q0:q1], k[k0:k1], v[k0:k1], causal), atol=1e-5,
                                   rtol=1e-5)


def test_fp32_copy_changes_only_the_bf16_casts_of_the_named_files(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import reference_worker

    src = tmp_path / "codes"
    for name in (*reference_worker.PATCHED_FILES, "modeling/unimedvl/bagel.py"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("x = y.to(torch.bfloat16)\n")
    out = reference_worker.fp32_copy(src)
    for name in reference_worker.PATCHED_FILES:
        assert (out / name).read_text() == "x = y.to(torch.float32)\n"
    assert (out / "modeling/unimedvl/bagel.py").read_text() == "x = y.to(torch.bfloat16)\n"
    assert (src / reference_worker.PATCHED_FILES[0]).read_text() == "x = y.to(torch.bfloat16)\n"  # source untouched
