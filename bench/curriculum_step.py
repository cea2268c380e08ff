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
import dataclasses
import json
import time
from pathlib import Path

import torch

import unimedvl.train.objective as objective
from unimedvl.train.config import TrainConfig
from unimedvl.train.curriculum import Curriculum, stage_config
from unimedvl.train.trainer import Trainer
from unimedvl.utils.files import atomic_write_text

CURRICULUM = Path(__file__).resolve().parents[1] / "recipes" / "unimedvl-tiny" / "curriculum.yaml"


def trainer_for(run: Path, stage_name: str, workers: int, out: Path) -> Trainer:
    """The stage as the curriculum trains it in `run` (first stages from its base files and warm ViT),
    with `data.workers` set and its own output folder."""
    curriculum = Curriculum.from_yaml(CURRICULUM)
    stage = next((s for s in curriculum.stages if s.name == stage_name), None)
    if stage is None:
        raise SystemExit(f"{CURRICULUM.name} has no stage {stage_name!r}; its stages: {[s.name for s in curriculum.stages]}")
    config = stage_config(run, stage, TrainConfig.from_yaml(stage.recipe), warm_vit=curriculum.vit_warmup is not None)
    data = dataclasses.replace(config.data, workers=workers)
    return Trainer(dataclasses.replace(config, data=data, output_dir=str(out / f"workers-{workers}"),
                                       total_steps=10_000, save_every=10_000))


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
