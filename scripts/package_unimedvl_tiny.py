"""Copy a trained UniMedVL-tiny into the package (the CLI's default model) with its model card.

    .venv/bin/python scripts/package_unimedvl_tiny.py --run outputs/unimedvl-tiny [--evaluation EVAL.md]

OUT is a finished `unimedvl train recipes/unimedvl-tiny/curriculum.yaml --out OUT` run; EVAL.md the
evaluation section of the card (the `unimedvl eval` tables, v1 against v2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from unimedvl.train.curriculum import CURRICULUM_FILES, MODEL_FILES  # what a curriculum's OUT/model holds

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "src" / "unimedvl" / "assets" / "unimedvl-tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "unimedvl-tiny")
    parser.add_argument("--reproduced", default="a second full run was not compared.",
                        help="what a second full run showed (one sentence for the card)")
    parser.add_argument("--evaluation", type=Path, default=None, help="the card's evaluation section (markdown)")
    args = parser.parse_args()
    model = args.run / "model"
    manifest = json.loads((args.run / "corpus" / "manifest.json").read_text())
    evaluation = args.evaluation.read_text() if args.evaluation else "not run"
    TARGET.mkdir(parents=True, exist_ok=True)
    files = [*MODEL_FILES, *(name for name in CURRICULUM_FILES if (model / name).is_file())]
    for name in files:
        shutil.copy(model / name, TARGET / name)
    size = sum((TARGET / n).stat().st_size for n in files)
    # What a rerun of the curriculum is compared against, file by file (`unimedvl train ... --check`).
    sums = "".join(f"{hashlib.sha256((TARGET / n).read_bytes()).hexdigest()}  {n}\n" for n in files)
    (TARGET / "SHA256SUMS").write_text(sums)
    run = json.loads((args.run / "run.json").read_text())
    seconds = sum(step["seconds"] for step in run["steps"].values())
    minutes = f"{seconds / 60:.0f} minutes on {run['threads']} CPU threads"
    sources = "\n".join(f"| {name} | {s['licence']} | {s['records']} |" for name, s in manifest["sources"].items())
    reproduced = args.reproduced
    steps = ", ".join(f"{name} {step['seconds'] / 60:.1f} min" for name, step in run["steps"].items())
    card = f"""# UniMedVL-tiny

A small unified medical model (understanding and generation in one Qwen2-MoT + SigLIP + FLUX-style VAE
network, the UniMedVL architecture at tiny width) trained by unimedvl on a CPU ({minutes}),
through the three-stage curriculum (foundation, instruction tuning, unified). Files: {size / 2**20:.1f} MiB.
It exists so that every command runs on a laptop; it is **not** a clinical tool and its outputs are not
medically meaningful beyond the simple questions and prompts it was trained on.

- LLM: 4 MoT layers, hidden 192, 4 heads / 2 KV heads, MLP 512, vocabulary 2,048 BPE + 16 specials
  (tokenizer trained on the corpus text); ViT: 3 layers, hidden 128, patch 14, images read at 56 px,
  first trained alone on the corpus labels (`vit_warmup`: 31 source / class labels, 4,000 steps of 32
  images), then by the stages at a quarter of their learning rate (`optim.vit_lr_scale`);
  VAE: FLUX layout, ch 32 x [1, 1, 2, 2], 1,500 steps on batches of 16 corpus images (every source
  equally often). Generation trained at 64 and 128 px (`image_config.json` lists them; other sizes
  warn); think mode trained (`capabilities.json`); text-to-image samples with text guidance 6.0 unless
  told otherwise (`sampling_config.json`, from the curriculum's `sampling`).
- Training (`recipes/unimedvl-tiny/curriculum.yaml`, every step named there): {steps}.
  Questions: every record is asked one yes / no question about its own class and one about another,
  in phrasings drawn at random (each phrasing answered yes and no equally often, classes drawn
  equally often), a choice answered with the class name, open finding and modality questions; half
  of the closed questions come varied as users type them (a prefix such as "Question:", an
  answer-format suffix such as "Yes or no?", lower case, a modality synonym such as "radiograph";
  no evaluation paraphrase is ever built); 50 % of the images read are re-cropped, re-sampled
  (24 px ... native; images under 64 px keep 90-100 % of each side) and re-windowed.
- Reproduce, given the shared data folder that `recipes/unimedvl-tiny/corpus.yaml` names (every random
  draw is seeded; `SHA256SUMS` holds the shipped files' hashes):
  `.venv/bin/unimedvl train recipes/unimedvl-tiny/curriculum.yaml --out outputs/unimedvl-tiny --check src/unimedvl/assets/unimedvl-tiny`
  then `scripts/package_unimedvl_tiny.py`. Float results depend on the CPU kernels and thread count: {reproduced}

## Training data ({manifest['total']} samples after QC; every set of the shared data folder whose licence allows research use)

| set | licence | records |
|---|---|---|
{sources}

Because several sets allow research / non-commercial use only (BCI, Kvasir-SEG, the fundus set,
MIST), **these weights inherit those restrictions: research and teaching use only, with attribution
to every set above.** COVID-CT (no licence) and the IU X-ray reports (no images) were not used.

## Evaluation

{evaluation}
"""
    (TARGET / "MODEL_CARD.md").write_text(card)
    print(f"packaged {TARGET} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
