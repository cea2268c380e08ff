"""Training speed of one packed step (forward, backward, AdamW) and its MFU against the measured matmul peak.

    .venv/bin/python bench/train.py [--config small] [--tokens 512] [--steps 3] [--precision fp32,bf16]
                                    [--attention per_sample,dense] [--json out.json]

The pack mixes what the unified stage trains on: per sample a text prompt, a ViT image, an answer with
cross-entropy, and a noisy latent image with the flow-matching loss (latent tokens filled directly: the
VAE's encoding is not timed). FLOPs are counted from the shapes: 6 x the routed expert's matmul
weights per decoder token, the ViT's per ViT token, the lm_head on cross-entropy rows, and the attention
score and value products over each token's keys. The peer is the matmul peak measured in the same
run (`bench_model.matmul_peak_gflops`), in fp32 and, for `--precision bf16` (the trainer's bf16 autocast,
fp32 master weights; for CPUs with AMX), in bf16. `--attention per_sample,dense` times the pack attended
sample by sample (the trainer's default) against one attention over the pack's [L, L] mask, steps
interleaved on the same model, and prints the ratio. Attention FLOPs are counted over each sample's own
keys, the work a step needs, for both (so the dense form's masked cross-sample scores lower its MFU).
A benchmark, not a test: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_model import matmul_peak_gflops  # bench/ is on the path when a script there runs

from unimedvl.assets import UNIMEDVL_TINY
from unimedvl.config import UnifiedConfig
from unimedvl.model.builder import build_model
from unimedvl.model.packing import LatentSegment, PackBuilder, TextSegment, VitSegment
from unimedvl.text.tokenizer import SpecialTokens
from unimedvl.train.config import OptimConfig
from unimedvl.train.trainer import build_optimizer


def build_pack(config: UnifiedConfig, special: SpecialTokens, tokens: int, seed: int = 0):  # noqa: ANN201
    """Samples of [prompt 24, ViT 8x8, answer 24 (CE), noisy latent 8x8 (MSE)] until `tokens` is reached."""
    g = torch.Generator().manual_seed(seed)
    vocab, patch = config.llm.vocab_size, config.vit.patch_size
    builder = PackBuilder(special)
    while builder.num_tokens + 24 + 66 + 24 + 66 <= tokens:
        builder.new_sample()
        builder.add(TextSegment(tuple(torch.randint(100, vocab, (24,), generator=g).tolist())))
        builder.add(VitSegment(torch.rand(3, 8 * patch, 8 * patch, generator=g) * 2 - 1, (8, 8)))
        builder.add(TextSegment(tuple(torch.randint(100, vocab, (24,), generator=g).tolist()), loss=True))
        builder.add(LatentSegment((8, 8), noisy=True, tokens=torch.randn(64, config.patch_latent_dim, generator=g),
                                  timestep=0.5))
    return builder.build(seed=seed)


def step_flops(config: UnifiedConfig, batch) -> float:  # noqa: ANN001
    """Forward + backward matmul FLOPs (3 x forward) of one pack."""
    llm, vit = config.llm, config.vit
    h, kv, inter = llm.hidden_size, llm.num_key_value_heads * llm.head_dim, llm.intermediate_size
    layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    n = batch.num_tokens
    decoder = 2 * llm.num_hidden_layers * layer * n
    # Scores and values over about half of each sample's keys (causal): the work a step needs. Attention over the
    # pack's whole [L, L] mask does more (cross-sample scores, masked away), which this does not count.
    square = sum((end - start) ** 2 for start, end in batch.layout.sample_spans())
    attention = 2 * 2 * llm.num_hidden_layers * h * square / 2
    head = 2 * h * llm.vocab_size * batch.num_ce_tokens
    vit_tokens = sum(s.grid[0] * s.grid[1] for s in batch.segments if isinstance(s, VitSegment))
    vit_layer = 4 * vit.hidden_size ** 2 + 2 * vit.hidden_size * vit.intermediate_size
    vit_flops = 2 * vit.num_hidden_layers * vit_layer * vit_tokens
    return 3 * (decoder + attention + head + vit_flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="a preset (tiny / small / full) or unimedvl-tiny")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="comma list of fp32 / bf16 (bf16 autocast, as the trainer)")
    parser.add_argument("--attention", default="per_sample",
                        help="comma list of per_sample / dense (the pack's attention; both: interleaved, with the ratio)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    attentions = args.attention.split(",")
    if not attentions or any(a not in ATTENTIONS for a in attentions):
        raise SystemExit(f"--attention takes a comma list of {' / '.join(ATTENTIONS)}, not {args.attention!r}")
    rows = [row for precision in args.precision.split(",")
            for row in measure(args.config, args.tokens, args.steps, precision, attentions)]
    print("\n| preset | precision | attention | tokens (samples) | forward s | backward s | AdamW s | tokens/s | GFLOP/s "
          "| matmul peak | MFU (of measured peak) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['precision']} | {r['attention']} | {r['tokens']} ({r['samples']}) | "
              f"{r['best']['forward']:.2f} | {r['best']['backward']:.2f} | {r['best']['optimizer']:.2f} | "
              f"{r['tokens_per_s']:,.0f} | {r['gflops']:.0f} | {r['peak_gflops']:.0f} | {100 * r['mfu']:.0f}% |")
    by_key = {(r["precision"], r["attention"]): r for r in rows}
    for precision in args.precision.split(","):
        if (precision, "dense") in by_key and (precision, "per_sample") in by_key:
            ratio = by_key[precision, "per_sample"]["tokens_per_s"] / by_key[precision, "dense"]["tokens_per_s"]
            print(f"{precision}: a step attended sample by sample runs {ratio:.2f}x the dense [L, L] mask")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


ATTENTIONS = ("per_sample", "dense")


def measure(preset: str, tokens: int, steps: int, precision: str, attentions: list[str]) -> list[dict]:
    if precision not in ("fp32", "bf16"):
        raise SystemExit(f"--precision takes fp32 / bf16, not {precision!r}")
    # UniMedVL-tiny's shape (its weights are not read: every bench model starts from the same random init)
    config = UnifiedConfig.from_checkpoint_dir(UNIMEDVL_TINY) if preset == "unimedvl-tiny" else UnifiedConfig.preset(preset)
    torch.manual_seed(0)
    model = build_model(config, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
    model.train()
    optimizer = build_optimizer(list(model.parameters()), OptimConfig(lr=1e-5), sharded=False)  # as a run builds it
    special = SpecialTokens(bos=1, eos=2, start_of_image=3, end_of_image=4)
    batch = build_pack(config, special, tokens)
    flops = step_flops(config, batch)
    peak = matmul_peak_gflops(dtype=torch.float32 if precision == "fp32" else torch.bfloat16)
    times = {a: {"forward": [], "backward": [], "optimizer": []} for a in attentions}
    for step in range(steps + 1):  # the first step warms up (allocator, AdamW state)
        order = attentions if step % 2 == 0 else attentions[::-1]  # interleaved, neither always first
        for attention in order:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(batch, per_sample=attention == "per_sample")
                loss = F.cross_entropy(out.logits.float(), batch.ce_targets, reduction="mean")
                for velocity in out.velocities:
                    loss = loss + velocity.float().pow(2).mean()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # as the trainer does: gradient buffers are kept, not re-faulted
            t3 = time.perf_counter()
            if step:
                for key, seconds in zip(times[attention], (t1 - t0, t2 - t1, t3 - t2)):
                    times[attention][key].append(seconds)
    samples = len(batch.layout.sample_spans())
    rows = []
    for attention in attentions:
        best = {k: min(v) for k, v in times[attention].items()}
        achieved = flops / sum(best.values()) / 1e9
        print(f"  {preset} {precision} {attention}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, "
              f"{batch.num_tokens} tokens in {samples} samples ({batch.num_ce_tokens} CE, {batch.num_mse_tokens} MSE), "
              f"{achieved:.0f} GFLOP/s", flush=True)
        rows.append({"config": preset, "precision": precision, "attention": attention, "tokens": batch.num_tokens,
                     "samples": samples, "times": times[attention], "best": best, "flops": flops, "peak_gflops": peak,
                     "gflops": achieved, "tokens_per_s": batch.num_tokens / sum(best.values()), "mfu": achieved / peak})
    return rows


if __name__ == "__main__":
    main()
