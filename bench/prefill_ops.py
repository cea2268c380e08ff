"""Where a long text prefill's time goes, op by op: the candidates for beating `transformers` there.

    .venv/bin/python bench/prefill_ops.py [--configs unimedvl-tiny,small] [--tokens 4096] [--repeats 15] [--json out.json]

Both codes run the same kernels (bench/lm.py), so this measures the changes that would make ours differ,
each against the form used today, interleaved in one process (best of N):
* q / k / v projections: three biased matmuls against one over the concatenated weights;
* gate / up projections: two matmuls against one over the concatenated weights (the SwiGLU then reads
  two strided halves);
* causal GQA attention (SDPA's CPU kernel) on our layout (queries transposed from `[L, H, D]`, keys and
  values contiguous from the cache) against transformers' layout (all transposed) and a contiguous one.
Shapes come from the named configs. A benchmark, not a test; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from unimedvl.assets import UNIMEDVL_TINY
from unimedvl.config import UnifiedConfig
from unimedvl.utils.files import atomic_write_text


def best_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each function in ms, the functions called in turn (so machine drift hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * min(values) for name, values in times.items()}


def measure(name: str, tokens: int, repeats: int) -> list[dict]:
    cfg = UnifiedConfig.from_checkpoint_dir(UNIMEDVL_TINY) if name == "unimedvl-tiny" else UnifiedConfig.preset(name)
    llm = cfg.llm
    h, inter, heads, kv_heads, d = (llm.hidden_size, llm.intermediate_size, llm.num_attention_heads,
                                    llm.num_key_value_heads, llm.head_dim)
    kv = kv_heads * d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, h, generator=g)
    wq, wk, wv = (torch.randn(n, h, generator=g) / h**0.5 for n in (heads * d, kv, kv))
    bq, bk, bv = (torch.randn(n, generator=g) for n in (heads * d, kv, kv))
    wqkv, bqkv = torch.cat([wq, wk, wv]), torch.cat([bq, bk, bv])
    wg, wu = (torch.randn(inter, h, generator=g) / h**0.5 for _ in range(2))
    wgu = torch.cat([wg, wu])

    def swiglu_fused() -> torch.Tensor:
        y = F.linear(x, wgu)
        return F.silu(y[:, :inter]) * y[:, inter:]

    q = torch.randn(tokens, heads, d, generator=g)
    k, v = torch.randn(tokens, kv_heads, d, generator=g), torch.randn(tokens, kv_heads, d, generator=g)
    layouts = {"ours": (q.transpose(0, 1), k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()),
               "transformers": (q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)),
               "contiguous": (q.transpose(0, 1).contiguous(), k.transpose(0, 1).contiguous(),
                              v.transpose(0, 1).contiguous())}

    def attend(layout: str) -> Callable[[], torch.Tensor]:
        qq, kk, vv = layouts[layout]
        return lambda: F.scaled_dot_product_attention(qq[None], kk[None], vv[None], is_causal=True,
                                                      enable_gqa=heads != kv_heads)

    # Same results first: a faster form that computed something else would mean nothing.
    separate = torch.cat([F.linear(x, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)], dim=1)
    assert torch.allclose(separate, F.linear(x, wqkv, bqkv), atol=1e-4)
    assert torch.allclose(F.silu(F.linear(x, wg)) * F.linear(x, wu), swiglu_fused(), atol=1e-4)
    assert torch.allclose(attend("ours")(), attend("contiguous")(), atol=1e-5)

    groups = {
        "q / k / v projections": {"today": lambda: (F.linear(x, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)),
                                  "fused": lambda: F.linear(x, wqkv, bqkv).split([heads * d, kv, kv], dim=1)},
        "gate / up + SwiGLU": {"today": lambda: F.silu(F.linear(x, wg)) * F.linear(x, wu), "fused": swiglu_fused},
        "causal attention": {"today": attend("ours"), "transformers' layout": attend("transformers"),
                             "contiguous": attend("contiguous")},
    }
    rows = []
    for op, fns in groups.items():
        ms = best_ms(fns, repeats)
        for form, value in ms.items():
            rows.append({"config": name, "tokens": tokens, "op": op, "form": form, "ms": value,
                         "speedup_vs_today": ms["today"] / value})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="unimedvl-tiny,small")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for name in args.configs.split(",") for row in measure(name.strip(), args.tokens, args.repeats)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| config | tokens | op | form | ms (best) | speed-up vs today |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['tokens']} | {r['op']} | {r['form']} | {r['ms']:.2f} | {r['speedup_vs_today']:.2f}x |")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
