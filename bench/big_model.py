"""The released 14B layout on this machine: understanding-only int8 `ask`, its memory and speed.

    .venv/bin/python bench/big_model.py --dir /path/with/30GB/free [--quantize int8|int8-dynamic] [--keep]

Writes random weights in the released UniMedVL / BAGEL-7B-MoT layout (14.6 B parameters, bf16, sharded
safetensors with an index: about 29 GB), then runs `unimedvl ask --int8` (or `--int8-dynamic`, int8
activations too, on CPU) on a real chest X-ray in a child process and reports: load time, peak resident memory (VmHWM), time to the first answer token,
decode tokens/s and the decode limit from the measured memory read bandwidth (int8 bytes per token).
The answers are noise (random weights); what is measured is that the 14B model's understanding path
runs, and within how much memory. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from lm import read_bandwidth_gbs  # bench/ is on the path when a script there runs

from unimedvl.assets import REFERENCE_TINY, SAMPLES
from unimedvl.config import UnifiedConfig
from unimedvl.model.builder import build_model

SHIPPED = REFERENCE_TINY.parent / "unimedvl-tiny"
SHARD_BYTES = 2 << 30

PROBE = r"""
import json, sys, time, torch
from PIL import Image
start = time.perf_counter()
from unimedvl.inference.engine import UniMedVL, TextOptions
model = UniMedVL.from_pretrained(sys.argv[1], dtype="bfloat16", mode="understanding", quantize=sys.argv[4])
loaded = time.perf_counter()
def hwm(field="VmHWM"):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
after_load, resident = hwm(), hwm("VmRSS")
stamps = []
def on_token(*_):  # time of each generated token
    stamps.append(time.perf_counter())
asked = time.perf_counter()
answer = model.ask([Image.open(sys.argv[2])], "Is there pneumonia?", options=TextOptions(max_new_tokens=int(sys.argv[3])),
                   on_token=on_token)
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "peak_rss_load": after_load, "rss_after_load": resident,
                  "peak_rss": hwm(),
                  "first_token_s": stamps[0] - asked if stamps else None,
                  "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None,
                  "tokens": len(stamps), "ask_s": done - asked}))
"""


def write_random_checkpoint(folder: Path, config: UnifiedConfig | None = None, with_vae: bool = False) -> int:
    """Random bf16 weights for a config (default: the released full one) under the released key names, in
    ~2 GiB shards; `with_vae` adds a random fp32 `ae.safetensors` (bench/memory.py generates with it)."""
    from safetensors.torch import save_file

    config = config or UnifiedConfig.full()
    folder.mkdir(parents=True, exist_ok=True)
    config.save_to_dir(folder)
    for name in ("tokenizer.json",):
        shutil.copy(SHIPPED / name, folder / name)
    shapes = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    weight_map, shard, shard_bytes, index, total = {}, {}, 0, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, index
        if shard:
            name = f"ema-{index:05d}.safetensors"
            save_file(shard, str(folder / name))
            weight_map.update({k: name for k in shard})
            shard, shard_bytes, index = {}, 0, index + 1

    for key, shape in shapes.items():
        if key.endswith("norm.weight") or "_norm" in key and key.endswith(".weight"):
            tensor = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[key] = tensor
        shard_bytes += tensor.numel() * 2
        total += tensor.numel()
        if shard_bytes >= SHARD_BYTES:
            flush()
            print(f"  {sum(1 for _ in folder.glob('ema-*'))} shards written", flush=True)
    flush()
    if with_vae:
        from unimedvl.model.builder import build_vae

        vae = build_vae(config.vae, device="cpu")
        def value(key: str, shape: torch.Size) -> torch.Tensor:
            if len(shape) > 1:
                return torch.randn(shape, generator=generator) * 0.02
            return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)  # norms: identity

        save_file({k: value(k, v.shape) for k, v in vae.state_dict().items()}, str(folder / "ae.safetensors"))
    (folder / "ema.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total * 2},
                                                                   "weight_map": weight_map}))
    return total


def small_random_checkpoint(work: Path) -> Path:
    """The small preset with random weights and VAE in the released layout, written once under `work`."""
    folder = work / "unimedvl-small-random"
    if not (folder / "ema.safetensors.index.json").is_file():
        write_random_checkpoint(folder, config=UnifiedConfig.small(), with_vae=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where to write the ~29 GB checkpoint")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--quantize", choices=("int8", "int8-dynamic"), default="int8")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    args = parser.parse_args()
    folder = args.dir / "unimedvl-14b-random"
    start = time.perf_counter()
    if not (folder / "ema.safetensors.index.json").is_file():
        params = write_random_checkpoint(folder)
        print(f"wrote {params / 1e9:.2f} B parameters in {time.perf_counter() - start:.0f} s -> {folder}")
    bandwidth = read_bandwidth_gbs()
    image = SAMPLES / "chest_xray_nih.png"
    run = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(image), str(args.tokens), args.quantize],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-4000:])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    cfg = UnifiedConfig.full().llm
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    int8_bytes = cfg.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size) + h * cfg.vocab_size
    limit = bandwidth * 1e9 / int8_bytes
    print(f"\n{args.quantize}, understanding only\n")
    print("| load s | peak RSS | peak while loading | resident after loading | first token s | decode tok/s "
          "| decode limit tok/s (bandwidth) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {result['load_s']:.0f} | {result['peak_rss'] / 2**30:.2f} GiB | {result['peak_rss_load'] / 2**30:.2f} GiB "
          f"| {result['rss_after_load'] / 2**30:.2f} GiB "
          f"| {result['first_token_s']:.1f} | {result['decode_tok_s'] or float('nan'):.2f} | {limit:.2f} "
          f"({bandwidth:.1f} GB/s, {int8_bytes / 1e9:.2f} GB int8 per token) |")
    print(json.dumps({**result, "quantize": args.quantize, "bandwidth_gbs": bandwidth, "decode_limit_tok_s": limit}))
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
