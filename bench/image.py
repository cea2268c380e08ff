"""Image generation speed: guidance branches in one forward against the same call with the branches one by one.

    .venv/bin/python bench/image.py [--configs tiny,unimedvl-tiny,small] [--sizes 64,128,256,512] [--steps 10]
                                    [--compute float32|bfloat16] [--small-dir DIR] [--json out.json]

For each config and size it times text-to-image (2 branches: full and text-unconditional) and editing
(3 branches: + image-unconditional) with guidance, `UniMedVL.batch_guidance` forced on (True) and off
(False; the engine's default "auto" batches on CPU up to 256 latent tokens, 256 x 256 px), interleaved
(best of --repeats), and compares the two outputs (largest pixel difference, PSNR). With --cache it also
times feature caching (`GuidanceOptions.cache_interval`: the network every N steps, each branch's
velocity extrapolated in between) and states its quality cost as PSNR / SSIM against the uncached image. The small preset
has random bf16 weights written once to --small-dir (the released VAE's shape, random too), computed
in fp32, or in bf16 with `--compute bfloat16` (every config; for CPUs with AMX). A benchmark, not a test:
run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from big_model import small_random_checkpoint  # bench/ is on the path when a script there runs

from unimedvl.assets import REFERENCE_TINY, SAMPLES, default_checkpoint
from unimedvl.eval.metrics.image import psnr, ssim
from unimedvl.inference.engine import UniMedVL
from unimedvl.model.sampling import GuidanceOptions


def load(name: str, small_dir: Path, compute: str = "float32") -> UniMedVL:
    dtype = "float32" if compute == "float32" else None
    folder = small_random_checkpoint(small_dir) if name == "small" else {
        "tiny": REFERENCE_TINY, "unimedvl-tiny": default_checkpoint()}[name]
    return UniMedVL.from_pretrained(folder, dtype=dtype, compute=compute)


def timed_call(model: UniMedVL, batched: bool, task: str, size: int, steps: int, cache: int = 1
               ) -> tuple[float, np.ndarray]:
    model.batch_guidance = batched
    start = time.perf_counter()
    if task == "text-to-image":
        image = model.generate("A chest X-ray with pneumonia.", height=size, width=size, seed=0,
                               guidance=GuidanceOptions.text_to_image(num_timesteps=steps, cache_interval=cache))
    else:
        image = model.edit(SAMPLES / "brain_mri_msd.png", "Convert this T1 MRI to FLAIR.", seed=0, height=size,
                           width=size, guidance=GuidanceOptions.editing(num_timesteps=steps, cache_interval=cache))
    return time.perf_counter() - start, np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,unimedvl-tiny,small")
    parser.add_argument("--sizes", default="64,128,256,512")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", default="2,3", help="cache intervals to time against the uncached call (TaylorSeer-"
                        "style extrapolation between network calls); empty: none")
    parser.add_argument("--compute", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--small-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore", message=".*trained to generate.*")  # untrained sizes are timed on purpose
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        small_dir = args.small_dir or Path(scratch)
        for name in args.configs.split(","):
            model = load(name, small_dir, args.compute)
            for size in (int(s) for s in args.sizes.split(",")):
                for task in ("text-to-image", "editing"):
                    timed_call(model, True, task, size, 2)  # warm-up
                    times: dict[bool, list[float]] = {True: [], False: []}
                    images: dict[bool, np.ndarray] = {}
                    for _ in range(args.repeats):  # interleaved: both see the same machine state
                        for batched in (False, True):
                            seconds, images[batched] = timed_call(model, batched, task, size, args.steps)
                            times[batched].append(seconds)
                    row = {"config": name, "task": task, "size": size, "steps": args.steps,
                           "one_by_one_s": min(times[False]), "batched_s": min(times[True]),
                           "max_pixel_diff": int(np.abs(images[True].astype(int) - images[False].astype(int)).max()),
                           "psnr_db": psnr(images[True], images[False]), "cache": []}
                    for interval in (int(c) for c in args.cache.split(",") if c):
                        seconds, cached = min((timed_call(model, True, task, size, args.steps, interval)
                                               for _ in range(args.repeats)), key=lambda r: r[0])
                        row["cache"].append({"interval": interval, "seconds": seconds, "psnr_db": psnr(cached, images[True]),
                                             "ssim": ssim(cached, images[True]),
                                             "psnr_vs_one_by_one_db": psnr(cached, images[False])})
                    rows.append(row)
                    print(f"  {name} {task} {size}px: {row['one_by_one_s']:.3f} -> {row['batched_s']:.3f} s",
                          file=sys.stderr, flush=True)
            del model
    print(f"\nguidance branches batched vs one by one ({args.steps} timesteps, computing in {args.compute}, "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores)\n")
    print("| config | task | size | one by one s | batched s | speed-up | largest pixel difference | PSNR |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['task']} | {r['size']} | {r['one_by_one_s']:.3f} | {r['batched_s']:.3f} | "
              f"{r['one_by_one_s'] / r['batched_s']:.2f}x | {r['max_pixel_diff']} | {r['psnr_db']:.1f} dB |")
    cached_rows = [(r, c) for r in rows for c in r["cache"]]
    if cached_rows:
        print("\nfeature caching (network every N steps, velocities extrapolated in between, branches batched) against "
              "the uncached batched call, and both together against the uncached branches one by one:\n")
        print("| config | task | size | every N steps | seconds | speed-up | PSNR vs uncached | SSIM vs uncached "
              "| speed-up vs one by one | PSNR vs one by one |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r, c in cached_rows:
            print(f"| {r['config']} | {r['task']} | {r['size']} | {c['interval']} | {c['seconds']:.3f} | "
                  f"{r['batched_s'] / c['seconds']:.2f}x | {c['psnr_db']:.1f} dB | {c['ssim']:.3f} | "
                  f"{r['one_by_one_s'] / c['seconds']:.2f}x | {c['psnr_vs_one_by_one_db']:.1f} dB |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
