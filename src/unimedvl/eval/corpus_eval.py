"""A checkpoint evaluated on the held-out splits of the corpus it was trained on (UniMedVL-tiny's card).

VQA accuracy per template question type against two majority baselines, generated images judged by
the independent classifier (with its own recall on real images beside every row), VAE
reconstruction of held-out images, and held-out training losses. The benchmark harness
(`runner.py`, `unimedvl eval`) is the user-facing evaluation; this is the training-side view.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from unimedvl.eval.classifier import build_judge
from unimedvl.eval.generation import evaluate_generation
from unimedvl.eval.heldout import heldout_losses
from unimedvl.eval.reconstruction import held_out_images, reconstruction_by_modality
from unimedvl.eval.vqa import evaluate_vqa
from unimedvl.inference.engine import UniMedVL
from unimedvl.train.config import DataConfig


def evaluate_on_corpus(model_dir: Path, corpus: Path, out: Path, *, quick: bool = False,
                       classifier: tuple | None = None) -> dict:
    """Every held-out measure of a checkpoint on its own corpus; writes OUT/eval.json, OUT/eval.md and sample images.

    `classifier` is a judge from `classifier.build_judge` (trained here when not given; `quick` trains it shorter
    and asks fewer questions).
    """
    engine = UniMedVL.from_pretrained(model_dir)
    report: dict = {"model": str(model_dir), "corpus": str(corpus)}
    start = time.perf_counter()
    vqa = evaluate_vqa(engine, corpus, per_modality=10 if quick else 25)
    report["vqa"] = vqa.per_type
    report["vqa_by_modality"] = vqa.per_type_and_modality
    report["vqa_examples"] = vqa.examples
    if classifier is None:
        classifier = build_judge(corpus, modality_epochs=10, pneumonia_epochs=4) if quick else build_judge(corpus)
    report["classifier"] = classifier[2]
    generation = evaluate_generation(engine, classifier[0], classifier[1], seeds=3 if quick else 6)
    report["generation"] = {"per_modality": generation.per_modality, "overall": generation.overall,
                            "pneumonia": generation.pneumonia, "predicted": generation.predicted}
    recon = reconstruction_by_modality(engine.vae, held_out_images(corpus, per_modality=32, size=64), classifier[0])
    report["vae_reconstruction"] = {m: vars(r) for m, r in recon.items()}
    report["heldout"] = heldout_losses(engine, str(corpus), data=DataConfig(tokens_per_pack=384, max_tokens_per_sample=384))
    report["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Evaluation of {model_dir.name}", "",
             "Held-out = the val and test splits of the corpus (MedMNIST keeps its official val split), "
             f"at most {10 if quick else 25} questions per question type and modality.", ""]
    lines += ["## VQA on the held-out split", ""] + vqa.table() + ["", "Per modality:", ""] + vqa.modality_table() + [""]
    c = report["classifier"]
    lines += ["## Generated images, judged by an independent classifier", "",
              f"Classifier (small CNN trained on {c['train_images']} real train images): modality accuracy on "
              f"{c['test_images']} real held-out images {c['modality_accuracy_real_test']:.3f} (balanced "
              f"{c['modality_balanced_accuracy_real_test']:.3f}; balanced on the same images blurred with sigma 1.5 px "
              f"{c['modality_balanced_accuracy_real_test_blurred']:.3f}); pneumonia head ({c['pneumonia_train_images']} train "
              f"chest X-rays) accuracy {c['pneumonia_accuracy_real_test']:.3f} (balanced "
              f"{c['pneumonia_balanced_accuracy_real_test']:.3f}) on {c['pneumonia_test_images']} held-out ones.", "",
              "| requested modality | recognised | judged as | judge's recall on real held-out images (n) "
              "| on its real train images (n) |", "|---|---|---|---|---|"]

    def recall(split: str, modality: str) -> str:
        row = c[f"modality_recall_real_{split}"].get(modality)
        return f"{row['recall']:.2f} ({row['images']})" if row else "none held out"

    lines += [f"| {m} | {r:.2f} | {', '.join(f'{k} {v}' for k, v in generation.predicted[m].items())} "
              f"| {recall('test', m)} | {recall('train', m)} |" for m, r in generation.per_modality.items()]
    lines += ["", f"Chest X-ray finding recognised: {generation.pneumonia}", "",
              "## VAE reconstruction of held-out images (64 px)", "",
              "| modality | images | L1 | colourfulness in | colourfulness out | judge recognises in | out |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {r.images} | {r.l1:.3f} | {r.colour_in:.3f} | {r.colour_out:.3f} | {r.recognised_in:.2f} "
              f"| {r.recognised_out:.2f} |" for m, r in recon.items()]
    lines += ["",
              f"Held-out losses (test split, teacher-forced): {report['heldout']}"]
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    for index, (prompt, seed, image) in enumerate(generation.images):
        image.save(out / f"generated_{index:02d}.png")
    return report
