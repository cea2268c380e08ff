"""A UniMedVL-tiny curriculum step on its real corpus: packs made in the training process against a worker.

    .venv/bin/python bench/curriculum_step.py --run outputs/unimedvl-tiny [--stage stage1-foundation]
                                              [--blocks 4] [--steps 12] [--json out.json]

`--run` is the output folder of `unimedvl train recipes/unimedvl-tiny/curriculum.yaml` (its corpus, base
model files and warm ViT). Two trainers of the stage's recipe, one with `data.workers: 0` and one with
`data.workers: 1`, run blocks of steps in turn (the first two steps of each block are not timed, since a
worker may have made them ahead while the other trainer ran). Both see the same packs and compute the same
losses, which the script checks. It also times where one in-process step goes (making the packs, the VAE
encoding, the model's forward, the rest: backward, clipping, AdamW, EMA). A benchmark, not a test; run it
alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import unimedvl.train.objective as objective
from unimedvl.train.config import TrainConfig
from unimedvl.train.trainer import Trainer
from unimedvl.utils.files import atomic_write_text

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "unimedvl-tiny"


def trainer_for(run: Path, stage: str, workers: int, out: Path) -> Trainer:
    raw = TrainConfig.from_yaml(RECIPES / f"{stage}.yaml").to_dict()
    base = run / "base"
    raw["model"] = {"preset": None, "config_dir": str(base), "tokenizer": str(base), "vae": str(base / "ae.safetensors"),
                    **({"vit": str(run / "vit-warmup" / "model.safetensors")} if (run / "vit-warmup").is_dir() else {})}
    raw["data"]["corpus"] = str(run / "corpus" if stage == "stage1-foundation" else run / "corpus-instruction")
    raw["data"]["workers"] = workers
    raw["output_dir"] = str(out / f"workers-{workers}")
    raw["total_steps"], raw["save_every"] = 10_000, 10_000
    return Trainer(TrainConfig.from_dict(raw, stage))


def breakdown(trainer: Trainer, steps: int) -> dict[str, float]:
    """ms per in-process step in: making the packs, the VAE encoding, the model's forward, and the rest."""
    spent = {"make packs": 0.0, "VAE encoding": 0.0, "forward": 0.0}

    def timing(name, fn):  # noqa: ANN001, ANN202
        def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapped

    make, encode, forward = trainer.packs.make, objective.encode_latents, type(trainer.model).forward
    trainer.packs.make = timing("make packs", make)
    objective.encode_latents = timing("VAE encoding", encode)
    type(trainer.model).forward = timing("forward", forward)
    try:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
            trainer.step += 1
        total = time.perf_counter() - start
    finally:
        trainer.packs.make, objective.encode_latents, type(trainer.model).forward = make, encode, forward
    out = {k: 1000 * v / steps for k, v in spent.items()}
    out["rest (backward, AdamW, EMA)"] = 1000 * total / steps - sum(out.values())
    out["step"] = 1000 * total / steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--stage", default="stage1-foundation")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/unimedvl-bench-curriculum-step"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trainers = {w: trainer_for(args.run, args.stage, w, args.out) for w in (0, 1)}
    times: dict[int, list[float]] = {0: [], 1: []}
    tokens: dict[int, list[int]] = {0: [], 1: []}
    losses: dict[int, list[float]] = {0: [], 1: []}
    try:
        for _ in range(args.blocks):
            for workers, trainer in trainers.items():
                for k in range(args.steps):
                    start = time.perf_counter()
                    metrics = trainer.train_step()
                    elapsed = time.perf_counter() - start
                    trainer.step += 1
                    losses[workers].append(metrics["loss"])
                    if k >= 2:
                        times[workers].append(elapsed)
                        tokens[workers].append(metrics["tokens"])
        if losses[0] != losses[1]:
            raise SystemExit("the two trainers computed different losses: not comparable")
        parts = breakdown(trainers[0], args.steps)
    finally:
        for trainer in trainers.values():
            trainer.close()
    rows = [{"workers": w, "ms_per_step": 1000 * sum(times[w]) / len(times[w]),
             "tokens_per_s": sum(tokens[w]) / sum(times[w])} for w in (0, 1)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.stage} of {args.run}; "
          f"{len(times[0])} timed steps each, losses identical\n")
    print("| data.workers | ms / step | tokens / s | speed-up |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['ms_per_step']:.0f} | {r['tokens_per_s']:,.0f} | "
              f"{rows[0]['ms_per_step'] / r['ms_per_step']:.2f}x |")
    print("\none in-process step (data.workers 0): " + ", ".join(f"{k} {v:.0f} ms" for k, v in parts.items()))
    if args.json:
        atomic_write_text(args.json, json.dumps({"rows": rows, "breakdown_ms": parts}, indent=1) + "\n")


if __name__ == "__main__":
    main()
