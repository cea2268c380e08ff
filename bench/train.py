"""Training speed of one packed step (forward, backward, AdamW) and its MFU against the measured matmul peak.

    .venv/bin/python bench/train.py [--config small] [--tokens 512] [--steps 3] [--precision fp32,bf16] [--json out.json]

The pack mixes what the unified stage trains on: per sample a text prompt, a ViT image, an answer with
cross-entropy, and a noisy latent image with the flow-matching loss (latent tokens filled directly: the
VAE's encoding is not timed). FLOPs are counted from the shapes: 6 x the routed expert's matmul
weights per decoder token, the ViT's per ViT token, the lm_head on cross-entropy rows, and the attention
score and value products over each token's keys. The peer is the matmul peak measured in the same
run (`bench_model.matmul_peak_gflops`), in fp32 and, for `--precision bf16` (the trainer's bf16 autocast,
fp32 master weights; for CPUs with AMX), in bf16. A benchmark, not a test: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_model import matmul_peak_gflops  # bench/ is on the path when a script there runs

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
    attention = 2 * 2 * llm.num_hidden_layers * h * n * n / 2  # scores and values, about half the keys (causal)
    head = 2 * h * llm.vocab_size * batch.num_ce_tokens
    vit_tokens = sum(s.grid[0] * s.grid[1] for s in batch.segments if isinstance(s, VitSegment))
    vit_layer = 4 * vit.hidden_size ** 2 + 2 * vit.hidden_size * vit.intermediate_size
    vit_flops = 2 * vit.num_hidden_layers * vit_layer * vit_tokens
    return 3 * (decoder + attention + head + vit_flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="comma list of fp32 / bf16 (bf16 autocast, as the trainer)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [measure(args.config, args.tokens, args.steps, precision) for precision in args.precision.split(",")]
    print("\n| preset | precision | tokens | forward s | backward s | AdamW s | tokens/s | GFLOP/s | matmul peak "
          "| MFU (of measured peak) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['precision']} | {r['tokens']} | {r['best']['forward']:.2f} | "
              f"{r['best']['backward']:.2f} | {r['best']['optimizer']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['gflops']:.0f} | {r['peak_gflops']:.0f} | {100 * r['mfu']:.0f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def measure(preset: str, tokens: int, steps: int, precision: str) -> dict:
    if precision not in ("fp32", "bf16"):
        raise SystemExit(f"--precision takes fp32 / bf16, not {precision!r}")
    config = UnifiedConfig.preset(preset)
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
    times = {"forward": [], "backward": [], "optimizer": []}
    for step in range(steps + 1):  # the first step warms up (allocator, AdamW state)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(batch)
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
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    achieved = flops / sum(best.values()) / 1e9
    print(f"  {preset} {precision}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, "
          f"{batch.num_tokens} tokens ({batch.num_ce_tokens} CE, {batch.num_mse_tokens} MSE), {achieved:.0f} GFLOP/s",
          flush=True)
    return {"config": preset, "precision": precision, "tokens": batch.num_tokens, "times": times, "best": best,
            "flops": flops, "peak_gflops": peak, "gflops": achieved, "tokens_per_s": batch.num_tokens / sum(best.values()),
            "mfu": achieved / peak}


if __name__ == "__main__":
    main()
