"""The paper's ablation at our scale: understanding-only, generation-only and joint training,
equal steps, same initialisation (the UniMedVL-tiny base: tokenizer, VAE, random init), evaluated on
the held-out splits.

    .venv/bin/python scripts/ablation_unimedvl_tiny.py --out outputs/unimedvl-tiny [--steps 500]

Needs `unimedvl train recipes/unimedvl-tiny/curriculum.yaml --out OUT` to have built OUT/corpus and OUT/base. Writes OUT/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VARIANTS = {"understanding only": {"understanding": 1.0}, "generation only": {"generation": 1.0},
            "joint": {"understanding": 0.5, "generation": 0.5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "unimedvl-tiny")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    from unimedvl.eval.classifier import build_judge
    from unimedvl.eval.corpus_eval import evaluate_on_corpus as evaluate
    from unimedvl.train.config import TrainConfig
    from unimedvl.train.trainer import Trainer

    corpus, base = args.out / "corpus", args.out / "base"
    classifier = build_judge(corpus)
    rows = {}
    for name, mix in VARIANTS.items():
        folder = args.out / "ablation" / name.replace(" ", "-")
        recipe = TrainConfig.from_yaml(REPO / "recipes/unimedvl-tiny/stage1-foundation.yaml").to_dict()
        recipe["model"] = {"preset": None, "config_dir": str(base), "tokenizer": str(base), "vae": str(base / "ae.safetensors")}
        recipe["data"].update(corpus=str(corpus), mix=mix)
        recipe.update(output_dir=str(folder), total_steps=args.steps, save_every=args.steps, stage=f"ablation: {name}")
        export = folder / "export"
        if not (export / "ema.safetensors").is_file():
            trainer = Trainer(TrainConfig.from_dict(recipe))
            trainer.fit()
            trainer.export(export)
            trainer.close()
        rows[name] = evaluate(export, corpus, folder / "eval", quick=True, classifier=classifier)
    lines = [f"Equal steps ({args.steps} x 2 packs of 384 tokens), same initialisation, held-out = val + test splits "
             "(at most 10 questions per type and modality).", "",
             "| training | VQA modality acc | VQA finding acc | VQA yes/no acc | generated images recognised (modality) "
             "| held-out CE / token | held-out MSE / token |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        vqa = r["vqa"]
        acc = lambda k: f"{vqa[k]['accuracy']:.3f}" if k in vqa else "-"  # noqa: E731
        lines.append(f"| {name} | {acc('modality')} | {acc('finding')} | {acc('yesno')} | {r['generation']['overall']:.3f} "
                     f"| {r['heldout'].get('ce_per_token', float('nan')):.3f} | {r['heldout'].get('mse_per_token', float('nan')):.3f} |")
    first = next(iter(rows.values()))["vqa"]
    lines += ["", "Baselines on the same questions (majority / majority given modality): "
              + ", ".join(f"{k} {v['baseline']:.3f}" + ("" if k == "modality" else f" / {v['baseline_given_modality']:.3f}")
                         for k, v in sorted(first.items()))]
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
