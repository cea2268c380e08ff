"""CPU compute in bf16 against fp32, same model and call, in the same run (`load_checkpoint(compute=...)`).

    .venv/bin/python bench/compute_dtype.py [--configs unimedvl-tiny,small] [--size 256] [--steps 10] [--json out.json]

For each config it loads the model twice, computing in fp32 (the default) and in bf16 (`--compute
bfloat16`: bf16 weights, the VAE in fp32), and times, interleaved (best of --repeats): a 1,024-token
text prefill, 32 greedy decoding steps, a question about the bundled 1024 px chest X-ray, text-to-image
and editing with guidance at --size px. It states what bf16 costs: relative L2 distance and top-1
agreement of next-token logits, PSNR / SSIM of the images against the fp32 ones. The machine's peers
are its fp32 and bf16 matmul peaks, measured by the script: bf16 pays only on CPUs with bf16 matrix
units (AMX), and `auto` picks it only there. The small preset has random bf16 weights written once to
--small-dir. A benchmark, not a test: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_model import matmul_peak_gflops  # bench/ is on the path when a script there runs
from big_model import small_random_checkpoint
from lm import DECODE_STEPS, ours_decode, ours_prefill, timed

from unimedvl.assets import SAMPLES, default_checkpoint
from unimedvl.eval.metrics.image import psnr, ssim
from unimedvl.inference.engine import UniMedVL
from unimedvl.model.layers import cpu_has_amx
from unimedvl.model.sampling import GuidanceOptions

PREFILL = 1024


def tasks(model: UniMedVL, ids: torch.Tensor, size: int, steps: int) -> dict:
    """name -> (callable, what it returns to compare)."""
    cache = ours_prefill(model.model, ids)[1]
    return {
        "prefill": lambda: ours_prefill(model.model, ids)[0].float(),
        "decode": lambda: ours_decode(model.model, cache, ids[-1:], DECODE_STEPS),
        "ask": lambda: model.ask([SAMPLES / "chest_xray_nih.png"], "Is there pneumonia?", max_new_tokens=8).text,
        "text-to-image": lambda: np.asarray(model.generate(
            "A chest X-ray with pneumonia.", height=size, width=size, seed=0,
            guidance=GuidanceOptions.text_to_image(num_timesteps=steps))),
        "editing": lambda: np.asarray(model.edit(
            SAMPLES / "brain_mri_msd.png", "Convert this T1 MRI to FLAIR.", seed=0, height=size, width=size,
            guidance=GuidanceOptions.editing(num_timesteps=steps))),
    }


def bench_config(name: str, folder: Path, size: int, steps: int, repeats: int) -> list[dict]:
    models = {c: UniMedVL.from_pretrained(folder, compute=c) for c in ("float32", "bfloat16")}
    vocab = models["float32"].config.llm.vocab_size
    ids = torch.randint(0, vocab, (PREFILL,), generator=torch.Generator().manual_seed(2))
    runs = {c: tasks(m, ids, size, steps) for c, m in models.items()}
    rows = []
    for task in runs["float32"]:
        times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        outputs = {}
        for c in times:
            outputs[c] = runs[c][task]()  # warm-up, and the output compared below
        for _ in range(repeats):  # interleaved: both see the same machine state
            for c in times:
                times[c].append(timed(runs[c][task]))
        row = {"config": name, "task": task, "fp32_s": min(times["float32"]), "bf16_s": min(times["bfloat16"])}
        a, b = outputs["float32"], outputs["bfloat16"]
        if task == "prefill":
            row["logits_rel_l2"] = float((a - b).norm() / a.norm())
            row["top1_same"] = bool(a.argmax() == b.argmax())
        elif task == "ask":
            row["same_answer"] = a == b
        elif isinstance(a, np.ndarray):
            row["psnr_db"], row["ssim"] = psnr(b, a), ssim(b, a)
        rows.append(row)
        print(f"  {name} {task}: {row['fp32_s']:.3f} s fp32, {row['bf16_s']:.3f} s bf16", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="unimedvl-tiny,small")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore", message=".*trained to generate.*")
    peaks = {"fp32": matmul_peak_gflops(), "bf16": matmul_peak_gflops(dtype=torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 matrix units (AMX): "
          f"{cpu_has_amx()}; matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} "
          f"GFLOP/s ({peaks['bf16'] / peaks['fp32']:.2f}x)")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs.split(","):
            folder = small_random_checkpoint(args.small_dir or Path(scratch)) if name == "small" else default_checkpoint()
            rows += bench_config(name, folder, args.size, args.steps, args.repeats)
    print("\n| config | task | fp32 s | bf16 s | bf16 speed-up | what bf16 costs |\n|---|---|---|---|---|---|")
    for r in rows:
        if "logits_rel_l2" in r:
            cost = f"logits {100 * r['logits_rel_l2']:.2f}% (rel. L2), top-1 {'same' if r['top1_same'] else 'differs'}"
        elif "psnr_db" in r:
            cost = f"{r['psnr_db']:.1f} dB PSNR, SSIM {r['ssim']:.3f} vs fp32"
        elif "same_answer" in r:
            cost = "same answer" if r["same_answer"] else "another answer"
        else:
            cost = "-"
        unit = f" ({PREFILL} tokens)" if r["task"] == "prefill" else f" ({DECODE_STEPS} tokens)" if r["task"] == "decode" else (
            f" ({args.size} px, {args.steps} steps)" if r["task"] in ("text-to-image", "editing") else "")
        print(f"| {r['config']} | {r['task']}{unit} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} | "
              f"{r['fp32_s'] / r['bf16_s']:.2f}x | {cost} |")
    if args.json:
        args.json.write_text(json.dumps({"peaks_gflops": peaks, "amx": cpu_has_amx(), "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
