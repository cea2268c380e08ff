"""Image generation against the original UniMedVL code: same checkpoint, same call, same initial noise.

    .venv/bin/python bench/reference_peer.py --reference-src UniMedVL/codes --reference-python REFVENV/bin/python
                                             [--config small|tiny] [--size 256] [--steps 10] [--repeats 2]
                                             [--work DIR] [--json out.json]

The peer is uni-medical/UniMedVL at commit 64a9915 (the commit the reference-tiny fixture was recorded
from): `git clone https://github.com/uni-medical/UniMedVL` and pass its `codes/` folder. It runs in its
own Python, because it needs transformers 4.49 (ours pins 5.x):

    python3.11 -m venv REFVENV && REFVENV/bin/pip install torch==2.13.0 transformers==4.49.0 einops safetensors numpy pillow

`bench/reference_worker.py` loads it once in that Python (a flash-attn stand-in on PyTorch SDPA, its
bfloat16 casts read as float32: see there) and waits; this script loads ours in-process and sends the
two codes the same calls in turn (ours, ours with caching, reference, ours, ...), so each runs alone on the
machine and neither gets a warmer or cooler machine. Calls: `interleave_inference([prompt])` (text-to-image,
text guidance 4, interval 0.4-1) and `interleave_inference([image, prompt])` (editing, text guidance 4,
image guidance 2, renorm text_channel), timestep shift 3, the same initial noise, the input image
224 px (a multiple of both strides, so neither code resizes it), the output `--size`. Timed: the whole
call, context prefill to decoded image. Outputs compared (largest pixel difference, PSNR).
The small config has random bf16 weights in the released layout (the released VAE's shape), written once
to --work. A benchmark, not a test: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from big_model import small_random_checkpoint  # bench/ is on the path when a script there runs
from PIL import Image

from unimedvl.assets import REFERENCE_TINY, SAMPLES
from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.eval.metrics.image import psnr
from unimedvl.inference.engine import UniMedVL
from unimedvl.model.sampling import GuidanceOptions
from unimedvl.tools.reference_check import IDENTITY_SIZES

HERE = Path(__file__).resolve().parent
PROMPTS = {"text-to-image": "A chest X-ray with pneumonia.", "editing": "Convert this T1 MRI to FLAIR."}


def guidance(task: str, steps: int) -> GuidanceOptions:
    if task == "text-to-image":
        return GuidanceOptions.text_to_image(num_timesteps=steps)
    return GuidanceOptions.editing(num_timesteps=steps)


def reference_kwargs(options: GuidanceOptions) -> dict:
    """The same options as the reference's interleave_inference keywords."""
    return {"cfg_text_scale": options.text_scale, "cfg_img_scale": options.image_scale,
            "cfg_interval": list(options.interval), "cfg_renorm_type": options.renorm_type,
            "cfg_renorm_min": options.renorm_min, "timestep_shift": options.timestep_shift,
            "num_timesteps": options.num_timesteps}


class Reference:
    """The worker process: one request at a time, one JSON line each way."""

    def __init__(self, python: str, src: Path, checkpoint: Path, threads: int, dtype: str = "float32") -> None:
        self.process = subprocess.Popen(
            [python, str(HERE / "reference_worker.py"), "--src", str(src), "--checkpoint", str(checkpoint),
             "--threads", str(threads), "--dtype", dtype], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._read()
        print(f"reference ready (torch {ready['torch']})", file=sys.stderr)

    def _read(self) -> dict:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise SystemExit(f"the reference worker stopped (exit {self.process.wait()}); its error is above")
        return json.loads(line)

    def call(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-src", type=Path, required=True, help="the UniMedVL checkout's codes/ folder")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="a Python with the reference's dependencies (transformers 4.49)")
    parser.add_argument("--config", choices=("small", "tiny"), default="small")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", default="2,3", help="also time ours with feature caching every N steps (approximate; "
                        "its PSNR against the reference says how much); empty: none")
    parser.add_argument("--bf16", action="store_true", help="also time ours computing in bf16 (`compute=\"bfloat16\"`, "
                        "for CPUs with AMX), exact and with caching; the reference stays in float32")
    parser.add_argument("--reference-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="float32: the reference's bf16 casts read as fp32 (its CPU path); bfloat16: its sources "
                        "as written under CPU autocast to bf16 (as its CUDA autocast on a GPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unimedvl-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.reference_src / "inferencer.py").is_file():
        raise SystemExit(f"{args.reference_src} is not the reference's codes/ folder (no inferencer.py)")
    if args.size % 16:
        raise SystemExit(f"--size must be a multiple of 16, got {args.size}")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = small_random_checkpoint(args.work) if args.config == "small" else REFERENCE_TINY
    ours = UniMedVL(load_checkpoint(checkpoint, dtype="float32", device="cpu"), image_config=IDENTITY_SIZES)
    ours_bf16 = UniMedVL(load_checkpoint(checkpoint, device="cpu", compute="bfloat16"),
                         image_config=IDENTITY_SIZES) if args.bf16 else None
    reference = Reference(args.reference_python, args.reference_src, checkpoint, args.threads, args.reference_dtype)
    image_path = args.work / "edit-input-224.png"
    Image.open(SAMPLES / "brain_mri_msd.png").convert("RGB").resize((224, 224), Image.BICUBIC).save(image_path)
    side = args.size // 16
    rows = []
    try:
        for task in ("text-to-image", "editing"):
            options = guidance(task, args.steps)
            noise = torch.randn(side * side, 64, generator=torch.Generator().manual_seed(0))
            noise_path = args.work / f"noise-{task}-{args.size}.npy"
            np.save(noise_path, noise.numpy())
            items: list = [PROMPTS[task]] if task == "text-to-image" else [Image.open(image_path), PROMPTS[task]]
            request = {"task": task, "prompt": PROMPTS[task], "image": str(image_path), "size": args.size,
                       "guidance": reference_kwargs(options), "noise": str(noise_path),
                       "out": str(args.work / f"reference-{task}.png")}
            intervals = [int(c) for c in args.cache.split(",") if c]
            variants = {"ours": (ours, options), **{f"ours, cache every {n}": (ours, replace(options, cache_interval=n))
                                                    for n in intervals}}
            if ours_bf16 is not None:
                variants["ours, bf16 compute"] = (ours_bf16, options)
                variants.update({f"ours, bf16 compute, cache every {n}": (ours_bf16, replace(options, cache_interval=n))
                                 for n in intervals})
            times: dict[str, list[float]] = {**{name: [] for name in variants}, "reference": []}
            images: dict[str, np.ndarray] = {}
            for repeat in range(args.repeats + 1):  # the first round warms both up and is not counted
                for name in times:
                    start = time.perf_counter()
                    if name == "reference":
                        answer = reference.call(request)
                        seconds = answer["seconds"]
                        images[name] = np.asarray(Image.open(request["out"]).convert("RGB"))
                    else:
                        model, variant = variants[name]
                        image, _ = model.interleave(items, height=args.size, width=args.size, noise=noise,
                                                    guidance=variant)
                        seconds = time.perf_counter() - start
                        images[name] = np.asarray(image)
                    if repeat:
                        times[name].append(seconds)
                    print(f"  {task} {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
            if answer["prompt_ids"] != ours.tokenizer.encode(PROMPTS[task]):
                raise SystemExit(f"the two codes tokenised {PROMPTS[task]!r} differently")
            best = {name: min(values) for name, values in times.items()}
            for name in variants:
                diff = np.abs(images[name].astype(int) - images["reference"].astype(int))
                rows.append({"task": task, "code": name, "seconds": best[name], "reference_seconds": best["reference"],
                             "speedup": best["reference"] / best[name], "max_pixel_diff": int(diff.max()),
                             "psnr_vs_reference": psnr(Image.fromarray(images[name]), Image.fromarray(images["reference"]))})
    finally:
        reference.close()
    print(f"\n{args.config} config, {args.size} px, {args.steps} steps, {args.threads} threads, best of {args.repeats}, "
          f"the reference in {args.reference_dtype}\n")
    print("| task | ours | seconds | reference s | speedup | max pixel diff | PSNR vs reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['code']} | {r['seconds']:.2f} | {r['reference_seconds']:.2f} | {r['speedup']:.2f}x | "
              f"{r['max_pixel_diff']} | {r['psnr_vs_reference']:.1f} dB |")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "size": args.size, "steps": args.steps,
                                         "reference_dtype": args.reference_dtype,
                                         "threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
