"""Peak memory of loading and of one task, per load mode and storage, against the weights' own size.

    .venv/bin/python bench/memory.py [--config small] [--dir DIR] [--json out.json]

Writes random weights for the preset (bf16, the released layout, with a random VAE) once, then for each
mode runs a child process that loads the checkpoint, records its peak resident memory (VmHWM), asks one
question about a real 1024 px chest X-ray (and, in full mode, generates one 64 px image in 3 steps) and
records the peak of each task alone (the peak is reset after loading, through /proc/self/clear_refs); it also records the resident memory (VmRSS) right after loading, to tell
what loading holds for a moment from what stays. The peer is the bytes the mode's weights must occupy (`tools/model_size.py:
mode_bytes`, the figures `unimedvl info` prints); the table gives each peak's growth over a bare
`import torch` process, and its ratio to those bytes. bf16 weights stay memory-mapped: their pages
count in RSS once touched. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from big_model import write_random_checkpoint  # bench/ is on the path when a script there runs

from unimedvl.assets import SAMPLES
from unimedvl.config import UnifiedConfig
from unimedvl.tools.model_size import mode_bytes

PROBE = r"""
import json, sys
import torch
def hwm(field="VmHWM"):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
base = hwm()
from PIL import Image
from unimedvl.inference.engine import UniMedVL, TextOptions
from unimedvl.model.sampling import GuidanceOptions
folder, image, mode, dtype, quantize = sys.argv[1:6]
model = UniMedVL.from_pretrained(folder, dtype=dtype, mode=mode, quantize=None if quantize == "none" else quantize)
after_load, resident = hwm(), hwm("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak: what follows is the task's own peak
model.ask([Image.open(image)], "Is there pneumonia?", options=TextOptions(max_new_tokens=8))
after_ask = hwm()
after_generate = None
if mode == "full":
    open("/proc/self/clear_refs", "w").write("5")
    model.generate("A chest X-ray.", height=64, width=64, seed=0, guidance=GuidanceOptions.text_to_image(num_timesteps=4))
    after_generate = hwm()
print(json.dumps({"base": base, "load": after_load, "resident": resident, "ask": after_ask, "generate": after_generate}))
"""

MODES = (("full", "float32", "none"), ("full", "bfloat16", "none"), ("understanding", "float32", "none"),
         ("understanding", "bfloat16", "none"), ("understanding", "bfloat16", "int8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="preset to write (small, tiny)")
    parser.add_argument("--dir", type=Path, help="where to write the checkpoint (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = UnifiedConfig.preset(args.config)
    with tempfile.TemporaryDirectory() as scratch:
        folder = (args.dir or Path(scratch)) / f"unimedvl-{args.config}-random"
        if not (folder / "ema.safetensors.index.json").is_file():
            params = write_random_checkpoint(folder, config=config, with_vae=True)
            print(f"wrote {params / 1e6:.0f} M parameters (bf16) -> {folder}", file=sys.stderr)
        from unimedvl.model.builder import build_vae

        vae_count = sum(p.numel() for p in build_vae(config.vae).parameters())
        expected = mode_bytes(config, vae_count)
        rows = []
        for mode, dtype, quantize in MODES:
            run = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(SAMPLES / "chest_xray_nih.png"),
                                  mode, dtype, quantize], capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{mode} {dtype} {quantize}: {run.stderr.strip().splitlines()[-1]}")
            peaks = json.loads(run.stdout.strip().splitlines()[-1])
            storage = "int8" if quantize == "int8" else dtype
            rows.append({"mode": mode, "storage": storage, "weights_bytes": expected[f"{mode} {storage}"], **peaks})
            print(f"  {mode} {storage}: {peaks}", file=sys.stderr, flush=True)
    mib = 1024 * 1024
    print(f"\nmemory per load mode: {args.config} preset, torch {torch.__version__}; growth over a bare torch process\n")
    print("| mode | storage | weights (info) | peak while loading | x weights | resident after loading | x weights "
          "| peak during ask | peak during generate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        growth = {k: (r[k] - r["base"]) / mib if r[k] is not None else None
                  for k in ("load", "resident", "ask", "generate")}
        gen = f"{growth['generate']:,.0f} MiB" if growth["generate"] is not None else "-"
        print(f"| {r['mode']} | {r['storage']} | {r['weights_bytes'] / mib:,.0f} MiB | {growth['load']:,.0f} MiB | "
              f"{growth['load'] * mib / r['weights_bytes']:.2f}x | {growth['resident']:,.0f} MiB | "
              f"{growth['resident'] * mib / r['weights_bytes']:.2f}x | {growth['ask']:,.0f} MiB | {gen} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
