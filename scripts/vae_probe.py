"""Local experiment: would more VAE training put x2 super-resolution above bicubic within this VAE's reach?

    .venv/bin/python scripts/vae_probe.py --corpus outputs/unimedvl-tiny/corpus [--checkpoint DIR]
        [--size 64] [--steps 3000] [--lr 3e-4] [--evals 3]

Starts from the checkpoint's VAE (default: the shipped UniMedVL-tiny) and trains it further with the
curriculum's own loss and batches (`train/vae_training.py`: L1 + 1e-4 KL, every source drawn equally
often, random square crops at `--size` px, cosine learning rate). Before training and `--evals` times
during it, it prints, per modality, the two ceilings `unimedvl eval edits` reports on the held-out x2
super-resolution pairs (128 px): the target's own round trip through the VAE, and bicubic plus the
decoded difference of the target's and bicubic's latents. No generator decoding through the VAE is
expected to beat the first; when both stay below bicubic, the task is out of the VAE's reach. Nothing is
written; not a test.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch

from unimedvl.assets import ASSETS
from unimedvl.checkpoint.folder import load_vae
from unimedvl.config import VAEConfig
from unimedvl.eval.edit_bench import held_out_pairs, sized_pair, vae_ceilings
from unimedvl.eval.metrics.image import psnr
from unimedvl.train.schedule import lr_factor
from unimedvl.train.vae_training import ImageSampler, corpus_images, draw_batch, vae_step


def pairs_at(corpus: Path, side: int, stride: int, per_modality: int):
    """(modality, target, bicubic) per held-out x2 pair, sized as `unimedvl eval edits` sizes them."""
    rows = []
    for sample, source, _, target in held_out_pairs(corpus, "super_resolution", per_modality=per_modality):
        target_sized, _, bicubic = sized_pair(source, target, side, stride)
        rows.append((sample.modality, target_sized, bicubic))
    return rows


def ceilings(vae, rows) -> dict[str, dict]:  # noqa: ANN001
    vae.eval()
    table: dict[str, list[tuple[float, float, float]]] = {}
    for modality, target, bicubic in rows:
        round_trip, residual = vae_ceilings(vae, target, bicubic)
        scores = (psnr(round_trip, target), psnr(residual, target), psnr(bicubic, target))
        table.setdefault(modality, []).append(scores)
    vae.train()

    def mean(column: int, v: list) -> float:
        return float(sum(r[column] for r in v) / len(v))
    return {m: {"n": len(v), "round_trip": mean(0, v), "residual": mean(1, v), "bicubic": mean(2, v),
                "residual_above": int(sum(bool(r[1] > r[2]) for r in v))} for m, v in sorted(table.items())}


def print_table(step: int, table: dict[str, dict]) -> None:
    print(f"\nafter {step} more steps: PSNR dB at 128 px (held-out x2 pairs)")
    print("| modality | n | round trip | bicubic + latent residual (above bicubic) | bicubic |")
    print("|---|---|---|---|---|")
    for modality, row in table.items():
        print(f"| {modality} | {row['n']} | {row['round_trip']:.1f} | {row['residual']:.1f} "
              f"({row['residual_above']}/{row['n']}) | {row['bicubic']:.1f} |")
    print(json.dumps({"step": step, "ceilings": table}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="the curriculum's built corpus folder")
    parser.add_argument("--checkpoint", type=Path, default=ASSETS / "unimedvl-tiny")
    parser.add_argument("--size", type=int, default=64, help="training crop side (the curriculum trains at 64)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--per-modality", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = VAEConfig.from_json_dict(json.loads((args.checkpoint / "vae_config.json").read_text()))
    vae, _ = load_vae(args.checkpoint / "ae.safetensors", config, dtype=torch.float32, device=torch.device("cpu"))
    rows = pairs_at(args.corpus, 128, 8, args.per_modality)
    print_table(0, ceilings(vae, rows))
    sampler = ImageSampler(corpus_images(args.corpus), 0.0, keep_side=2 * args.size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    every, started = max(1, args.steps // max(1, args.evals)), time.time()
    for step in range(args.steps):
        rng = random.Random(f"probe/{step}")
        l1, _ = vae_step(vae, optimizer, draw_batch(sampler, args.size, args.batch, rng), rng.randrange(2**31), 1e-4,
                         args.lr * lr_factor(step, 0, args.steps, "cosine", 0.0))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} l1 {float(l1):.4f} ({time.time() - started:.0f} s)", flush=True)
        if (step + 1) % every == 0 or step + 1 == args.steps:
            print_table(step + 1, ceilings(vae, rows))


if __name__ == "__main__":
    main()
