"""CPU figures for the model: prefill and decode tokens/s, seconds per image, peak memory while loading.

    .venv/bin/python bench/bench_model.py [--threads 2]

Peers measured in the same run:
* the machine's fp32 matrix-multiply peak (torch.mm on 2048x2048), against which the achieved
  GFLOP/s of prefill is a ratio;
* for loading, the size of one fp32 copy of the weights, against which peak RSS growth is a ratio.

Rows: the built-in tiny checkpoint (the fixture size, where per-call overhead dominates) and a
"bench" config with random weights (hidden 1024, 8 layers) where the matmuls dominate.
Prints a Markdown table; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unimedvl.assets import REFERENCE_TINY
from unimedvl.config import LLMConfig, UnifiedConfig, VAEConfig, ViTConfig
from unimedvl.inference.engine import UniMedVL
from unimedvl.model.builder import build_model
from unimedvl.model.sampling import GuidanceOptions

BENCH_CONFIG = UnifiedConfig(
    llm=LLMConfig(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4),
    vit=ViTConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_hidden_layers=2),
    vae=VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def llm_flops_per_token(cfg: LLMConfig, context: int) -> float:
    """Matmul FLOPs of one token through the understanding expert, with `context` keys to attend to."""
    h, kv, d = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim
    proj = h * h * 2 + h * kv * 2  # q, o, k, v
    mlp = 3 * h * cfg.intermediate_size
    attn = 2 * cfg.num_attention_heads * d * context
    return cfg.num_hidden_layers * 2 * (proj + mlp + attn / 2)


def time_best(fn, repeats: int = 3) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def measure(engine: UniMedVL, prompt_tokens: int, decode_tokens: int, image_side: int, steps: int) -> dict:
    model = engine.model
    vocab = min(engine.tokenizer.vocab_size, model.config.llm.vocab_size) - 20
    ids = torch.randint(0, vocab, (prompt_tokens,), generator=torch.Generator().manual_seed(0))

    def prefill() -> None:
        model.prefill_text(model.new_cache(), ids)

    prefill_s = time_best(prefill)
    ctx = model.new_cache()
    model.prefill_text(ctx, ids)

    def decode() -> None:
        # Always decode exactly decode_tokens (no early stop): feed argmax back, as generate_text does.
        fork = ctx.fork()
        fork.reserve(decode_tokens)
        token = torch.tensor([engine.special.bos])
        for _ in range(decode_tokens):
            token = model.decode_step(fork, token).argmax(-1)

    decode_s = time_best(decode)
    guidance = GuidanceOptions(num_timesteps=steps)
    image_s = time_best(lambda: engine.generate("A chest X-ray.", height=image_side, width=image_side,
                                                guidance=guidance, seed=0), repeats=2)
    gflop = llm_flops_per_token(model.config.llm, prompt_tokens // 2) * prompt_tokens / 1e9
    return {"prefill_tok_s": prompt_tokens / prefill_s, "prefill_gflops": gflop / prefill_s,
            "decode_tok_s": decode_tokens / decode_s, "image_s": image_s}


LOAD_PROBE = """
import json, sys, torch
from unimedvl.checkpoint.folder import load_checkpoint
def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
before = status("VmRSS")
loaded = load_checkpoint(sys.argv[1], dtype=sys.argv[2])
n = sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values())
print(json.dumps({"before_kib": before, "after_kib": status("VmHWM"), "weights_bytes": n}))
"""


def load_peak(folder: Path, dtype: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(folder), dtype], capture_output=True, text=True,
                          check=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["growth_bytes"] = (data["after_kib"] - data["before_kib"]) * 1024
    return data


def write_bench_checkpoint(folder: Path) -> None:
    """Random weights for BENCH_CONFIG, stored bf16 like the release, with the tiny tokenizer and VAE."""
    import shutil

    from safetensors.torch import save_file

    BENCH_CONFIG.save_to_dir(folder)
    for name in ("ae.safetensors", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REFERENCE_TINY / name, folder / name)
    torch.manual_seed(0)
    model = build_model(BENCH_CONFIG, device="cpu")  # the sin-cos tables are filled, the rest is drawn below
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
              str(folder / "ema.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.1f} GFLOP/s\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bench_dir = Path(tmp) / "bench"
        write_bench_checkpoint(bench_dir)
        for label, folder, prompt, decode, side, steps in (
            ("tiny (fixture)", REFERENCE_TINY, 256, 64, 256, 20),
            ("bench (H=1024, 8 layers)", bench_dir, 512, 32, 256, 10),
        ):
            engine = UniMedVL.from_pretrained(folder)
            m = measure(engine, prompt, decode, side, steps)
            mem = load_peak(folder, "float32")
            mem16 = load_peak(folder, "bfloat16")
            rows.append((label, prompt, m, decode, side, steps, mem, mem16))
    print("| model | prefill tok/s (T) | prefill GFLOP/s (% of matmul peak) | decode tok/s | s/image (side, steps) "
          "| load: fp32 weights | peak RSS growth fp32 (ratio) | peak RSS growth bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for label, prompt, m, decode, side, steps, mem, mem16 in rows:
        ratio = mem["growth_bytes"] / mem["weights_bytes"]
        print(f"| {label} | {m['prefill_tok_s']:,.0f} ({prompt}) | {m['prefill_gflops']:.1f} "
              f"({100 * m['prefill_gflops'] / peak:.0f}%) | {m['decode_tok_s']:,.0f} | {m['image_s']:.2f} "
              f"({side}px, {steps}) | {mem['weights_bytes'] / 2**20:.1f} MiB | {mem['growth_bytes'] / 2**20:.1f} MiB "
              f"({ratio:.2f}x) | {mem16['growth_bytes'] / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
