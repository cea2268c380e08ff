"""Generated images against real held-out ones: `unimedvl eval generation` and `unimedvl eval counterfactual`.

Generation: for each prompt, images from fixed seeds (0 .. seeds-1) at the model's size; per
modality a proxy FID against the bundled real images of that modality (`features.py`), the share the
judge recognises as the requested modality, the proxy image-text score (the judge's probability of
that modality) and, for chest X-rays, whether the requested finding is recognised (pneumonia AUROC
between "with" and "without pneumonia" prompts).

Counterfactuals (the paper's chest X-ray task): each held-out normal X-ray edited to show pneumonia
and each pneumonia X-ray edited to show none; the judge's pneumonia head scores the edits against
the requested label (AUROC, F1 at 0.5), a proxy FID compares them with real images of the requested
class, and the model's explanation of each edit is scored with BLEU-3 / METEOR / ROUGE-L against a
template reference (our data has no written explanations; the template says what was asked).
The extractor's hash, the seeds, the steps and the reference images' checksum are recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from PIL import Image

from unimedvl.assets import EVAL_SETS
from unimedvl.data.schema import MODALITIES
from unimedvl.eval.benchmarks import bundled
from unimedvl.eval.checks import wilson_interval
from unimedvl.eval.features import JudgeExtractor, auroc, f1
from unimedvl.eval.metrics.image import frechet_distance
from unimedvl.eval.metrics.text import bleu, meteor, rouge_l
from unimedvl.utils.files import atomic_write_text

# One or two prompts per modality the judge knows; none is a training template verbatim.
PROMPTS = {"chest_xray": ["A chest X-ray with pneumonia.", "A chest X-ray with no pneumonia."],
           "ultrasound": ["A breast ultrasound image."], "mri": ["An MRI scan of the brain with a glioma."],
           "ct": ["An abdominal CT scan."], "fundus": ["A fundus photograph of a retina."],
           "oct": ["A retinal OCT scan with drusen."], "endoscopy": ["An endoscopy image with a colorectal polyp."],
           "histopathology": ["A histopathology image of H&E-stained breast cancer tissue."]}
EDITS = {"pneumonia": "Edit this chest X-ray to show pneumonia.", "normal": "Edit this chest X-ray to show no pneumonia."}
EXPLAIN = "What does this chest X-ray show?"


def reference_images() -> dict[str, list[tuple[str, Image.Image]]]:
    """The bundled sets' distinct real images, per modality (chest X-rays also per label)."""
    out: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    seen: set[str] = set()
    for name in ("cxr-pneumonia", "breast-ultrasound"):
        for item in bundled.load(EVAL_SETS / name):
            data = item.image_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            image = Image.open(io.BytesIO(data)).convert("RGB")
            out[item.groups["modality"]].append((digest, image))
            if item.groups["modality"] == "chest_xray":
                out[f"chest_xray:{item.groups['label']}"].append((digest, image))
    return dict(out)


def _checksum(rows: list[tuple[str, Image.Image]]) -> str:
    return hashlib.sha256("".join(sorted(d for d, _ in rows)).encode()).hexdigest()


def _fid(extractor, generated: list[Image.Image], real: list[Image.Image]) -> float | None:  # noqa: ANN001
    """Fréchet distance of the extractor's features (the judge's: a proxy; Inception's: FID)."""
    if extractor is None or min(len(generated), len(real)) < 2:
        return None
    return frechet_distance(extractor.features(generated), extractor.features(real))


def _extractors(judge: JudgeExtractor, inception) -> dict:  # noqa: ANN001
    out = {"proxy": {"name": judge.name, "sha256": judge.sha256, "proxy": judge.proxy}}
    if inception is not None:
        out["inception"] = {"name": inception.name, "sha256": inception.sha256, "proxy": inception.proxy}
    return out


def evaluate_generation(engine, judge: JudgeExtractor, out: Path, *, seeds: int = 32, steps: int = 20,  # noqa: ANN001
                        size: int | None = None, inception=None,  # noqa: ANN001 - an InceptionExtractor
                        guidance: dict[str, object] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """`guidance`: GuidanceOptions fields laid over the checkpoint's recommendation (what `unimedvl generate`
    uses); the options sampled with are recorded in the results."""
    references = reference_images()
    options = engine.guidance("text_to_image", **{**(guidance or {}), "num_timesteps": steps})
    total, done = sum(len(p) for p in PROMPTS.values()) * seeds, 0
    results: dict[str, object] = {"seeds": list(range(seeds)), "steps": steps, "size": size or engine.image_config.default_size,
                                  "guidance": options.to_json_dict(),
                                  "extractors": _extractors(judge, inception), "per_modality": {}}
    (out / "images").mkdir(parents=True, exist_ok=True)
    every: dict[tuple[str, int], Image.Image] = {}
    for modality, prompts in PROMPTS.items():
        made: list[tuple[str, Image.Image]] = []
        for p_index, prompt in enumerate(prompts):
            for seed in range(seeds):
                image = engine.generate(prompt, seed=seed, height=size, width=size, guidance=options)
                image.save(out / "images" / f"{modality}-{p_index}-{seed}.png")
                made.append((prompt, image))
                every[(prompt, seed)] = image
                done += 1
                if progress:
                    progress(done, total)
        images = [i for _, i in made]
        probs = judge.modality_probabilities(images)
        wanted = MODALITIES.index(modality)
        real = references.get(modality, [])
        # what the judge read each image as: a miss shows which modality it looked like
        judged = dict(sorted(Counter(MODALITIES[i] for i in probs.argmax(1)).items()))
        recognised = judged.get(modality, 0)
        row: dict[str, object] = {"n": len(images), "recognised": recognised / len(images),
                                  "recognised_interval": wilson_interval(recognised, len(images)),
                                  "judged_as": judged,
                                  "image_text_proxy": float(probs[:, wanted].mean()),
                                  "fid_proxy": _fid(judge, images, [i for _, i in real]),
                                  "fid": _fid(inception, images, [i for _, i in real]), "references": len(real),
                                  "reference_checksum": _checksum(real)}
        if modality == "chest_xray":
            with_finding = [1 if "no pneumonia" not in p else 0 for p, _ in made]
            scores = judge.pneumonia_probability(images)
            row["pneumonia_auroc"] = auroc(scores, with_finding)
        results["per_modality"][modality] = row  # type: ignore[index]
    results["distance"] = pairwise_distances(every)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def pairwise_distances(images: dict[tuple[str, int], Image.Image]) -> dict[str, float | None]:
    """Mean absolute pixel difference (0-1) between images of different prompts drawn from the same seed, and
    between images of the same prompt from different seeds: a model that ignores its prompt has the first near 0."""
    import numpy as np

    arrays = {key: np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 for key, image in images.items()}
    keys = sorted(arrays)
    prompts_apart = [float(np.abs(arrays[a] - arrays[b]).mean()) for i, a in enumerate(keys) for b in keys[i + 1:]
                     if a[1] == b[1] and a[0] != b[0] and arrays[a].shape == arrays[b].shape]
    seeds_apart = [float(np.abs(arrays[a] - arrays[b]).mean()) for i, a in enumerate(keys) for b in keys[i + 1:]
                   if a[0] == b[0] and a[1] != b[1] and arrays[a].shape == arrays[b].shape]
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return {"between_prompts_same_seed": mean(prompts_apart), "between_seeds_same_prompt": mean(seeds_apart)}


def evaluate_counterfactual(engine, judge: JudgeExtractor, out: Path, *, steps: int = 20, limit: int | None = None,  # noqa: ANN001
                            inception=None,  # noqa: ANN001 - an InceptionExtractor
                            progress: Callable[[int, int], None] | None = None) -> dict:
    references = reference_images()
    sources = [("normal", d, i) for d, i in references["chest_xray:normal"]] + \
              [("pneumonia", d, i) for d, i in references["chest_xray:pneumonia"]]
    if limit:
        sources = sources[::max(1, len(sources) // limit)][:limit]
    guidance = engine.guidance("editing", num_timesteps=steps)
    edited, targets, explanations, references_text = [], [], [], []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for n, (label, digest, image) in enumerate(sources, start=1):
        target = "normal" if label == "pneumonia" else "pneumonia"
        result = engine.edit(image, EDITS[target], seed=0, guidance=guidance)
        result.save(out / "images" / f"{digest[:12]}-to-{target}.png")
        edited.append(result)
        targets.append(int(target == "pneumonia"))
        explanations.append(engine.ask([result], EXPLAIN, max_new_tokens=32).text)
        references_text.append("The chest X-ray shows pneumonia." if target == "pneumonia"
                               else "The chest X-ray shows no pneumonia.")
        if progress:
            progress(n, len(sources))
    scores = judge.pneumonia_probability(edited)
    text_bleu = bleu(explanations, references_text)
    results = {"n": len(edited), "steps": steps, "seed": 0,
               "extractors": _extractors(judge, inception),
               "auroc": auroc(scores, targets), "f1": f1(scores >= 0.5, targets),
               **{key: {t: _fid(extractor, [e for e, y in zip(edited, targets) if y == (t == "pneumonia")],
                                [i for _, i in references[f"chest_xray:{t}"]]) for t in ("pneumonia", "normal")}
                  for key, extractor in (("fid_proxy", judge), ("fid", inception))},
               "explanation": {"bleu_3": text_bleu[2], "meteor": meteor(explanations, references_text),
                               "rouge_l": rouge_l(explanations, references_text),
                               "reference": "template: 'The chest X-ray shows (no) pneumonia.'"},
               "reference_checksum": _checksum(references["chest_xray"])}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results

