"""Language-model speed against Hugging Face `transformers`, with the same weights, in the same run.

    .venv/bin/python bench/lm.py [--configs tiny,unimedvl-tiny,small] [--contexts 128,1024,4096] [--int8 small]
                                 [--compute float32|bfloat16] [--json out.json]

The understanding path of UniMedVL is Qwen2 with QK-norm, i.e. `transformers`' Qwen3ForCausalLM with
`attention_bias=True`: the peer is that model holding our understanding-expert weights (logits checked
first). For each config and context length T it measures, ours and the peer interleaved (best of N):
* prefill: T tokens into an empty cache and the next token's logits, tokens/s (ours as `ask` runs it: the
  last layer computes queries, attention and MLP for the last row only, `keep_last=1`; also every row, as
  `transformers` does, interleaved beside it);
* decode: 32 greedy steps after a T-token prefill, tokens/s, also with every layer eager (no compiled
  layer graphs, `model/decode_layer.py`) and with SDPA's attention instead of the built CPU kernel
  (`model/decode_attention.py`), each as a per-token ratio with the switch flipped in interleaved blocks
  on one cache (`switch_ratio`); for the --int8 configs also the same model
  with int8 decoder weights (one scale per row, as `ask --int8` loads it), with its logit drift.
Machine limits measured by the script: the matmul peak in the compute dtype (prefill GFLOP/s is a fraction
of it) and the memory read bandwidth (decode reads every active weight per token: its limit is bandwidth /
bytes). `--compute bfloat16` runs both models in bf16 (ours as `load_checkpoint(compute="bfloat16")` loads
it; for CPUs with bf16 matrix units, AMX), logits then checked within bf16's rounding.
Needs `pip install '.[bench]'` (transformers). A benchmark, not a test; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
from bench_model import matmul_peak_gflops  # bench/ is on the path when a script there runs

from unimedvl.assets import REFERENCE_TINY
from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.config import LLMConfig, UnifiedConfig
from unimedvl.model.builder import build_model
from unimedvl.model.decode_attention import DECODE_ATTENTION
from unimedvl.model.decode_layer import FUSED

DECODE_STEPS = 32
SHIPPED = REFERENCE_TINY.parent / "unimedvl-tiny"


class ReadProbe:
    """Streaming read bandwidth (GB/s) of buffers far larger than the caches, allocated once: torch's sum, a BLAS
    dot product with a ones vector and a BLAS matrix-vector product (decoding's pattern). The dot probe also runs
    beside each decode measurement: this machine's read bandwidth moves over minutes (50-79 GB/s seen), so a
    limit probed once at the start can understate or overstate the fraction a later decode reaches."""

    def __init__(self, megabytes: int = 1024) -> None:
        self.n = megabytes * 2**20 // 4
        self.x, self.ones = torch.ones(self.n), torch.ones(self.n)

    def _best(self, fn, nbytes: int, repeats: int) -> float:  # noqa: ANN001
        fn()
        return nbytes / min(timed(fn) for _ in range(repeats)) / 1e9

    def dot(self, repeats: int = 3) -> float:
        return self._best(lambda: torch.dot(self.x, self.ones), 8 * self.n, repeats)

    def all(self, repeats: int = 5) -> dict[str, float]:
        matrix = self.x.view(4096, -1)
        vector = self.ones[: matrix.shape[1]]
        return {"sum": self._best(lambda: self.x.sum(), 4 * self.n, repeats), "dot": self.dot(repeats),
                "matvec": self._best(lambda: torch.mv(matrix, vector), 4 * self.n, repeats)}


def read_bandwidth_gbs(megabytes: int = 1024, repeats: int = 5) -> float:
    """The best of the read-bandwidth probes: the machine's streaming limit as far as these kernels reach it."""
    return max(ReadProbe(megabytes).all(repeats).values())


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def llm_flops(cfg: LLMConfig, tokens: int, context: int) -> float:
    """Matmul FLOPs of `tokens` query tokens (understanding expert) over `context` keys; lm_head on the last only."""
    h, kv, d = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim
    per_token = cfg.num_hidden_layers * 2 * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)
    attention = cfg.num_hidden_layers * 2 * 2 * cfg.num_attention_heads * d * context / 2  # causal: half the keys
    return tokens * (per_token + attention) + 2 * h * cfg.vocab_size


def active_bytes(cfg: LLMConfig, context: int, element_size: int = 4) -> int:
    """Bytes decode reads per token: understanding weights (embedding row aside) and the K/V cache."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    layer = 2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size
    weights = cfg.num_hidden_layers * layer + h * cfg.vocab_size
    cache = cfg.num_hidden_layers * 2 * kv * context
    return element_size * (weights + cache)


def small_model():  # noqa: ANN201
    torch.manual_seed(0)
    model = build_model(UnifiedConfig.small(), device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def load_ours(name: str, compute: str = "float32"):  # noqa: ANN201
    if name == "small":
        model = small_model()
        if compute == "bfloat16":
            model.to(torch.bfloat16)
            model.cpu_compute_dtype = torch.bfloat16
        return model
    folder = {"tiny": REFERENCE_TINY, "unimedvl-tiny": SHIPPED}[name]
    dtype = "float32" if compute == "float32" else None
    return load_checkpoint(folder, dtype=dtype, compute=compute).model.eval()


def int8_copy(model, dynamic: bool = False):  # noqa: ANN001, ANN201
    """The same model with every decoder linear layer int8 (one scale per row), as `load_checkpoint(quantize="int8")`
    loads it, or with int8 activations too (FBGEMM, `quantize="int8-dynamic"`)."""
    from unimedvl.model.layers import Int8DynamicLinear, Int8Linear, Linear, pack_int8_dynamic, quantize_linears

    clone = copy.deepcopy(model)
    weights = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
               for n, m in clone.language_model.named_modules() if isinstance(m, Linear)}
    quantize_linears(clone.language_model, lambda name: True, Int8DynamicLinear if dynamic else Int8Linear)
    with torch.no_grad():
        for n, module in clone.language_model.named_modules():
            if isinstance(module, Int8Linear):
                weight, bias = weights.pop(n)
                module.load_weight(weight, weight.device)
                if bias is not None:
                    module.bias.copy_(bias)
    pack_int8_dynamic(clone)
    return clone.eval()


def int8_drift(model, quantized, length: int = 64) -> tuple[float, float]:  # noqa: ANN001
    """Relative max logit difference and top-1 agreement of the int8 copy against fp32 on random ids."""
    ids = torch.randint(0, model.config.llm.vocab_size, (length,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model.logits(model.prefill_text(model.new_cache(), ids))
        b = quantized.logits(quantized.prefill_text(quantized.new_cache(), ids))
    return float((a - b).abs().max() / a.abs().max()), float((a.argmax(-1) == b.argmax(-1)).float().mean())


def hf_peer(model):  # noqa: ANN001, ANN201
    """transformers' Qwen3ForCausalLM (q/k/v bias) holding our understanding expert's weights."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = model.config.llm
    config = Qwen3Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                         num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                         rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
                         max_position_embeddings=cfg.max_position_embeddings, attention_bias=True,
                         tie_word_embeddings=False, attn_implementation="sdpa", torch_dtype=torch.float32)
    peer = Qwen3ForCausalLM(config).eval()
    ours = {k.removeprefix("language_model."): v for k, v in model.state_dict().items()
            if k.startswith("language_model.") and "moe_gen" not in k}
    state = peer.state_dict()
    for key in state:
        if key in ours:
            state[key] = ours[key].float()  # cast to the compute dtype with the whole peer below
        elif key.endswith("o_proj.bias"):
            state[key] = torch.zeros_like(state[key])  # Qwen2 has no o_proj bias; Qwen3's attention_bias adds one
        else:
            raise KeyError(f"no weight for {key}")
    peer.load_state_dict(state)
    return peer.to(model.compute_dtype)


@torch.no_grad()
def ours_prefill(model, ids: torch.Tensor, keep_last: int | None = 1) -> tuple[torch.Tensor, object]:  # noqa: ANN001
    cache = model.new_cache(capacity=ids.numel() + DECODE_STEPS)
    hidden = model.prefill_text(cache, ids, keep_last=keep_last)
    return model.logits(hidden[-1:]), cache


@torch.no_grad()
def ours_decode(model, cache, token: torch.Tensor, steps: int) -> None:  # noqa: ANN001
    fork = cache.fork()
    fork.reserve(steps)
    for _ in range(steps):
        token = model.decode_step(fork, token).argmax(-1)


@torch.no_grad()
def switch_ratio(model, cache, token: torch.Tensor, switch, blocks: int = 8, per_block: int = 10) -> float:  # noqa: ANN001
    """How much faster one decoding token runs with `switch(True)` than with `switch(False)`: per-token medians,
    the two settings alternating in blocks of `per_block` tokens (the first two of a block not timed) on one fork,
    so both see the same machine state and the same cache length. Best-of-N runs of whole decodes, the peer
    comparison's method, moved by +-35 % between identical kernels on the small models here."""
    fork = cache.fork()
    fork.reserve(2 * blocks * per_block)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    try:
        for block in range(blocks):
            for on in ((True, False) if block % 2 else (False, True)):
                switch(on)
                for i in range(per_block):
                    start = time.perf_counter()
                    token = model.decode_step(fork, token).argmax(-1)
                    if i >= 2:
                        seconds[on].append(time.perf_counter() - start)
    finally:
        switch(True)
    median = {on: sorted(v)[len(v) // 2] for on, v in seconds.items()}
    return median[False] / median[True]


@torch.no_grad()
def hf_prefill(peer, ids: torch.Tensor):  # noqa: ANN001, ANN201
    out = peer(input_ids=ids[None], use_cache=True, logits_to_keep=1)
    return out.logits[0], out.past_key_values


@torch.no_grad()
def hf_decode(peer, cache, token: torch.Tensor, steps: int) -> None:  # noqa: ANN001
    cache = copy.deepcopy(cache)  # each run decodes from the same prefix, as ours does through fork()
    for _ in range(steps):
        out = peer(input_ids=token[None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[0, -1:].argmax(-1)


def check_logits(model, peer, length: int = 64) -> float:  # noqa: ANN001
    ids = torch.randint(0, model.config.llm.vocab_size, (length,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache()
        ours = model.logits(model.prefill_text(cache, ids))
        theirs = peer(input_ids=ids[None]).logits[0]
        last = ours_prefill(model, ids)[0]  # the prefill path timed below: its last row only
    return float(max((ours.float() - theirs.float()).abs().max(), (last.float() - theirs[-1:].float()).abs().max())
                 / theirs.float().abs().max())


def bench_config(name: str, contexts: list[int], repeats: int, peak: float, bandwidth: float,
                 with_int8: bool = False, probe: ReadProbe | None = None, compute: str = "float32") -> list[dict]:
    probe = probe or ReadProbe()
    model = load_ours(name, compute)
    peer = hf_peer(model)
    drift = check_logits(model, peer)
    element_size = 4 if compute == "float32" else 2
    if drift > (1e-4 if compute == "float32" else 3e-2):  # bf16: two op orders round differently
        raise SystemExit(f"{name}: logits differ from transformers by {drift:.2e} (relative); not comparable")
    quantized = int8_copy(model) if with_int8 else None
    int8_stats = int8_drift(model, quantized) if quantized is not None else None
    dynamic = int8_copy(model, dynamic=True) if with_int8 else None
    dynamic_stats = int8_drift(model, dynamic) if dynamic is not None else None
    cfg = model.config.llm
    rows = []
    for context in contexts:
        if context > cfg.max_position_embeddings:
            continue
        ids = torch.randint(0, cfg.vocab_size, (context,), generator=torch.Generator().manual_seed(2))
        r = 1 if context >= 4096 and name == "small" else repeats
        times = {"ours_prefill": [], "all_rows_prefill": [], "hf_prefill": [], "ours_decode": [], "hf_decode": [],
                 "int8_decode": [], "int8_dynamic_decode": []}
        for _ in range(r):  # interleaved, so both see the same machine state
            times["ours_prefill"].append(timed(lambda: ours_prefill(model, ids)))
            times["all_rows_prefill"].append(timed(lambda: ours_prefill(model, ids, keep_last=None)))
            times["hf_prefill"].append(timed(lambda: hf_prefill(peer, ids)))
        _, cache = ours_prefill(model, ids)
        _, hf_cache = hf_prefill(peer, ids)
        int8_cache = ours_prefill(quantized, ids)[1] if quantized is not None else None
        dynamic_cache = ours_prefill(dynamic, ids)[1] if dynamic is not None else None
        token = ids[-1:]
        beside: list[float] = []
        for _ in range(max(2, r)):
            beside.append(probe.dot())
            times["ours_decode"].append(timed(lambda: ours_decode(model, cache, token, DECODE_STEPS)))
            beside.append(probe.dot())
            if quantized is not None:
                times["int8_decode"].append(timed(lambda: ours_decode(quantized, int8_cache, token, DECODE_STEPS)))
                times["int8_dynamic_decode"].append(timed(lambda: ours_decode(dynamic, dynamic_cache, token,
                                                                               DECODE_STEPS)))
            copy_s = timed(lambda: copy.deepcopy(hf_cache))  # the peer's cache copy is ours' fork(): not decode time
            times["hf_decode"].append(timed(lambda: hf_decode(peer, hf_cache, token, DECODE_STEPS)) - copy_s)
        # Our own kernels against what they replace: per-token medians, switched in interleaved blocks on one cache.
        eager_layers = switch_ratio(model, cache, token, lambda on: setattr(FUSED, "off", not on))
        sdpa_attention = switch_ratio(model, cache, token, lambda on: setattr(DECODE_ATTENTION, "off", not on))
        best = {k: min(v) for k, v in times.items() if v}
        limit = bandwidth * 1e9 / active_bytes(cfg, context + DECODE_STEPS // 2, element_size)
        row = {"config": name, "context": context,
               "prefill_tok_s": context / best["ours_prefill"], "hf_prefill_tok_s": context / best["hf_prefill"],
               "all_rows_prefill_tok_s": context / best["all_rows_prefill"],
               "prefill_peak_fraction": llm_flops(cfg, context, context) / best["all_rows_prefill"] / 1e9 / peak,
               "decode_tok_s": DECODE_STEPS / best["ours_decode"],
               "hf_decode_tok_s": DECODE_STEPS / best["hf_decode"],
               "vs_eager_layers": eager_layers, "vs_sdpa_attention": sdpa_attention,
               "decode_limit_tok_s": limit, "logit_drift": drift, "bandwidth_beside_decode_gbs": max(beside),
               "decode_limit_beside_tok_s": max(beside) * 1e9 / active_bytes(cfg, context + DECODE_STEPS // 2,
                                                                             element_size)}
        if quantized is not None:
            row.update(int8_decode_tok_s=DECODE_STEPS / best["int8_decode"], int8_logit_drift=int8_stats[0],
                       int8_top1_agreement=int8_stats[1],
                       int8_dynamic_decode_tok_s=DECODE_STEPS / best["int8_dynamic_decode"],
                       int8_dynamic_logit_drift=dynamic_stats[0], int8_dynamic_top1_agreement=dynamic_stats[1])
        rows.append(row)
        print(f"  {name} T={context}: prefill {row['prefill_tok_s']:,.0f} (every row {row['all_rows_prefill_tok_s']:,.0f}) "
              f"vs {row['hf_prefill_tok_s']:,.0f} tok/s, "
              f"decode {row['decode_tok_s']:,.1f} vs {row['hf_decode_tok_s']:,.1f} tok/s "
              f"({eager_layers:.2f}x eager layers, {sdpa_attention:.2f}x SDPA attention)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,unimedvl-tiny,small")
    parser.add_argument("--contexts", default="128,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--int8", default="small", help="configs whose int8 decoding is measured too (comma list)")
    parser.add_argument("--compute", default="float32", choices=["float32", "bfloat16"],
                        help="what both models compute in (bfloat16: int8 is not measured)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    DECODE_ATTENTION.ensure_built()  # a first build takes ~35 s: not inside a timed decode
    probe = ReadProbe()
    dtype = torch.float32 if args.compute == "float32" else torch.bfloat16
    peak, probes = matmul_peak_gflops(dtype=dtype), probe.all()
    bandwidth = max(probes.values())
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"computing in {args.compute}; its matmul peak {peak:.0f} GFLOP/s, read bandwidth {bandwidth:.1f} GB/s (best of "
          + ", ".join(f"{k} {v:.1f}" for k, v in probes.items()) + ")")
    rows = []
    for name in args.configs.split(","):
        rows += bench_config(name, [int(c) for c in args.contexts.split(",")], args.repeats, peak, bandwidth,
                             with_int8=args.compute == "float32" and name in args.int8.split(","), probe=probe,
                             compute=args.compute)
    print("\n| config | T | prefill tok/s | vs transformers | every row vs transformers | every row, of matmul peak | decode tok/s "
          "| vs transformers | vs eager layers | vs SDPA attention | of bandwidth limit | of the limit probed beside it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['context']} | {r['prefill_tok_s']:,.0f} | "
              f"{r['prefill_tok_s'] / r['hf_prefill_tok_s']:.2f}x | "
              f"{r['all_rows_prefill_tok_s'] / r['hf_prefill_tok_s']:.2f}x | {100 * r['prefill_peak_fraction']:.0f}% | "
              f"{r['decode_tok_s']:,.1f} | {r['decode_tok_s'] / r['hf_decode_tok_s']:.2f}x | "
              f"{r['vs_eager_layers']:.2f}x | {r['vs_sdpa_attention']:.2f}x | "
              f"{100 * r['decode_tok_s'] / r['decode_limit_tok_s']:.0f}% | "
              f"{100 * r['decode_tok_s'] / r['decode_limit_beside_tok_s']:.0f}% ({r['bandwidth_beside_decode_gbs']:.0f} GB/s) |")
    int8_rows = [r for r in rows if "int8_decode_tok_s" in r]
    if int8_rows:
        print("\n| config | T | int8 | decode tok/s | vs fp32 (ours) | vs transformers fp32 | logit drift | top-1 agreement |")
        print("|---|---|---|---|---|---|---|---|")
        for r in int8_rows:
            for label, key in (("weights", "int8"), ("weights + activations", "int8_dynamic")):
                tok_s = r[f"{key}_decode_tok_s"]
                print(f"| {r['config']} | {r['context']} | {label} | {tok_s:,.1f} | {tok_s / r['decode_tok_s']:.2f}x | "
                      f"{tok_s / r['hf_decode_tok_s']:.2f}x | {100 * r[f'{key}_logit_drift']:.2f}% | "
                      f"{100 * r[f'{key}_top1_agreement']:.1f}% |")
    from unimedvl.model.matvec import MATVEC

    choices, layers = MATVEC.choices(), FUSED.choices()
    print("\ndecoding's matrix-vector kernel per weight shape, as measured in this process "
          f"(UNIMEDVL_FAST_DECODE={MATVEC.mode}): " + (", ".join(f"{k} {v}" for k, v in choices.items()) or "none measured"))
    print("decoding's layer step (eager or two compiled graphs) per layer shape: "
          + (", ".join(f"{k} {v}" for k, v in layers.items()) or "none measured"))
    print("decoding's attention (SDPA or the built kernel) per head layout and key range: "
          + (", ".join(f"{k} {v}" for k, v in DECODE_ATTENTION.choices().items()) or "none measured"))
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "bandwidth_gbs": bandwidth, "rows": rows,
                                         "matvec_kernels": choices, "decode_layers": layers,
                                         "decode_attention": DECODE_ATTENTION.choices()}, indent=1))


if __name__ == "__main__":
    main()
