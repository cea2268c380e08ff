"""Decoding's attention alone: the built CPU kernel against torch's SDPA, per head layout and key count.

    .venv/bin/python bench/decode_attention.py [--keys 1024,4096,16384] [--repeats 9] [--json out.json]

One query row per head over each layer's K/V cache (views of a store with room past their end, as
`KVStore` holds them), the layers read in turn so each cache comes from memory, as in a real decoding
step. Layouts: the small preset (8 layers, 16 / 4 heads of 64), UniMedVL-tiny (4 layers, 4 / 2 heads of
48) and the 14B model (28 layers, 28 / 4 heads of 128). SDPA and the kernel alternate (median of
`--repeats`); the outputs are checked to agree first. Also prints the bandwidth each reaches and the read
bandwidth probed in the same run (the peer a memory-bound kernel is held to). A benchmark, not a test;
run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lm import ReadProbe  # bench/ is on the path when a script there runs

from unimedvl.model.decode_attention import DECODE_ATTENTION, sdpa_decode

LAYOUTS = {"small preset": (8, 16, 4, 64), "UniMedVL-tiny": (4, 4, 2, 48), "14B": (28, 28, 4, 128)}


def measure(name: str, keys: int, repeats: int) -> dict:
    layers, heads, kv_heads, dim = LAYOUTS[name]
    g = torch.Generator().manual_seed(keys)
    caches = [(torch.randn(kv_heads, keys + 64, dim, generator=g)[:, :keys],
               torch.randn(kv_heads, keys + 64, dim, generator=g)[:, :keys]) for _ in range(layers)]
    queries = [torch.randn(heads, dim, generator=g) for _ in range(layers)]
    module = DECODE_ATTENTION.module
    kernels = {"sdpa": sdpa_decode, "kernel": lambda q, k, v: module.decode_attention(q, k, v, dim ** -0.5)}
    drift = max(float((kernels["kernel"](q, k, v) - sdpa_decode(q, k, v)).abs().max())
                for q, (k, v) in zip(queries, caches))
    if drift > 1e-5:
        raise SystemExit(f"{name}, {keys} keys: the kernel differs from SDPA by {drift:.2e}; not comparable")
    seconds: dict[str, list[float]] = {kernel: [] for kernel in kernels}
    with torch.no_grad():
        for r in range(repeats):
            for kernel in (("sdpa", "kernel") if r % 2 else ("kernel", "sdpa")):
                start = time.perf_counter()
                for q, (k, v) in zip(queries, caches):
                    kernels[kernel](q, k, v)
                seconds[kernel].append(time.perf_counter() - start)
    median = {kernel: sorted(v)[len(v) // 2] for kernel, v in seconds.items()}
    gigabytes = layers * 2 * kv_heads * keys * dim * 4 / 1e9
    return {"layout": name, "keys": keys, "drift": drift, "sdpa_ms": 1e3 * median["sdpa"],
            "kernel_ms": 1e3 * median["kernel"], "sdpa_gbs": gigabytes / median["sdpa"],
            "kernel_gbs": gigabytes / median["kernel"], "ratio": median["sdpa"] / median["kernel"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="1024,4096,16384")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not DECODE_ATTENTION.ensure_built():
        raise SystemExit("the decoding-attention kernel could not be built here (see the warning above)")
    bandwidth = max(ReadProbe().all().values())
    rows = [measure(name, int(keys), args.repeats) for name in LAYOUTS for keys in args.keys.split(",")]
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; read bandwidth probed {bandwidth:.1f} GB/s")
    print("| layout | keys | SDPA ms (GB/s) | kernel ms (GB/s) | kernel vs SDPA | largest difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['keys']:,} | {r['sdpa_ms']:.2f} ({r['sdpa_gbs']:.1f}) | "
              f"{r['kernel_ms']:.2f} ({r['kernel_gbs']:.1f}) | {r['ratio']:.2f}x | {r['drift']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"bandwidth_gbs": bandwidth, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
