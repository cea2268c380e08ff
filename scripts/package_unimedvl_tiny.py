"""Copy a trained UniMedVL-tiny into the package (the CLI's default model) with its model card.

    .venv/bin/python scripts/package_unimedvl_tiny.py --run outputs/unimedvl-tiny
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "src" / "unimedvl" / "assets" / "unimedvl-tiny"
FILES = ("ema.safetensors", "ae.safetensors", "llm_config.json", "vit_config.json", "vae_config.json",
         "tokenizer.json", "image_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "unimedvl-tiny")
    parser.add_argument("--reproduced", default="a second run was not compared.",
                        help="what a second full run showed (one sentence for the card)")
    args = parser.parse_args()
    model = args.run / "model"
    manifest = json.loads((args.run / "corpus" / "manifest.json").read_text())
    evaluation = (args.run / "eval" / "eval.md").read_text() if (args.run / "eval" / "eval.md").is_file() else "not run"
    ablation = (args.run / "ablation.md").read_text() if (args.run / "ablation.md").is_file() else "not run"
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(model / name, TARGET / name)
    size = sum((TARGET / n).stat().st_size for n in FILES)
    # What a rerun of the training script is compared against, file by file (scripts/train_unimedvl_tiny.py --check).
    sums = "".join(f"{hashlib.sha256((TARGET / n).read_bytes()).hexdigest()}  {n}\n" for n in FILES)
    (TARGET / "SHA256SUMS").write_text(sums)
    run = json.loads((args.run / "run.json").read_text()) if (args.run / "run.json").is_file() else {}
    minutes = f"{run['seconds'] / 60:.0f} minutes on {run['threads']} CPU threads" if run else "about an hour"
    sources = "\n".join(f"| {name} | {s['licence']} | {s['records']} |" for name, s in manifest["sources"].items())
    reproduced = args.reproduced
    vae_training = "an unrecorded number of steps on the corpus images"
    if "vae_steps" in run:
        vae_training = (f"{run['vae_steps']:,} steps on batches of 16 corpus images, each source drawn with weight "
                        f"size ** {run['vae_balance']}" + (" (every source equally often)" if run["vae_balance"] == 0 else ""))
    card = f"""# UniMedVL-tiny

A small unified medical model (understanding and generation in one Qwen2-MoT + SigLIP + FLUX-style VAE
network, the UniMedVL architecture at tiny width) trained by unimedvl on a CPU ({minutes}),
through the three-stage curriculum (foundation, instruction tuning, unified). Files: {size / 2**20:.1f} MiB.
It exists so that every command runs on a laptop; it is **not** a clinical tool and its outputs are not
medically meaningful beyond the simple questions and prompts it was trained on.

- LLM: 4 MoT layers, hidden 192, 4 heads / 2 KV heads, MLP 512, vocabulary 2,048 BPE + 14 specials
  (tokenizer trained on the corpus text); ViT: 3 layers, hidden 128, patch 14; VAE: FLUX layout,
  ch 32 x [1, 1, 2, 2], trained for {vae_training}. Images: 56 px for the ViT, 64 px for the VAE
  (image_config.json).
- Reproduce, given the shared data folder that `recipes/unimedvl-tiny/corpus.yaml` names (every random draw is seeded; `SHA256SUMS` holds the shipped files' hashes
  and `--check` compares a rerun with them, file by file):
  `.venv/bin/python scripts/train_unimedvl_tiny.py --out outputs/unimedvl-tiny --check`
  then `scripts/evaluate_unimedvl_tiny.py` and `scripts/package_unimedvl_tiny.py`.
  Float results depend on the CPU kernels and thread count: {reproduced}

## Training data ({manifest['total']} samples after QC; every set of the shared data folder whose licence allows research use)

| set | licence | records |
|---|---|---|
{sources}

Because several sets allow research / non-commercial use only (BCI, Kvasir-SEG, the fundus set,
MIST), **these weights inherit those restrictions: research and teaching use only, with attribution
to every set above.** COVID-CT (no licence) and the IU X-ray reports (no images) were not used.

## Evaluation (held-out val + test splits)

{evaluation}

## Ablation (equal steps)

{ablation}
"""
    (TARGET / "MODEL_CARD.md").write_text(card)
    print(f"packaged {TARGET} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
