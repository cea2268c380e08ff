"""Build the bundled evaluation sets (src/unimedvl/assets/eval_sets/).

    .venv/bin/python scripts/build_eval_sets.py --kermany DIR [--judge CORPUS]

MedMNIST and the MSD slices are read from the package's own redistributed copies
(src/unimedvl/assets/sample_data); DIR is the one input the package does not hold: the Kermany training
split at 224 px (cxr-pneumonia-kermany-224-train, 43 MB, CC BY 4.0), whose matched images the bundled
cxr-pneumonia set keeps.

Only redistributable sets (CC BY 4.0, CC BY-SA 4.0) are used, and only images no shipped model
was trained on:
* cxr-pneumonia: full-resolution (224 px) chest X-rays of the Kermany training split whose 28 px
  copies form PneumoniaMNIST's *val* split (held out from UniMedVL-tiny v1), matched image to image
  (best correlation over centre crops > 0.97 and a margin > 0.05 over the next candidate; every
  match agrees with the PneumoniaMNIST label), and only patients whose every image is in that set;
  balanced: as many pneumonia as normal images.
* breast-ultrasound: BreastMNIST's val split (28 px, the MedMNIST size).
* modality: the held-out images of the sets above and the MSD / NIH slices the v1 corpus held out,
  asked which modality they are.
Every yes / no question carries paraphrases never used in training and a polarity-flipped twin.
The result is deterministic; rerunning rewrites the same files.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "unimedvl" / "assets" / "eval_sets"
BUNDLED = REPO / "src" / "unimedvl" / "assets" / "sample_data"  # the redistributed copies, with their licence files
# The v1 corpus' held-out MSD / NIH slices (val or test split of recipes/unimedvl-tiny/corpus.yaml, seed 0).
MSD_HELD_OUT = {"brain_mri_msd_0.png": "mri", "mr_msd_2.png": "mri", "ct_abdomen_msd_4.png": "ct"}
MODALITY_ANSWER = {"chest_xray": "X-ray", "ultrasound": "Ultrasound", "mri": "MRI", "ct": "CT"}


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    return (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-6)


def patient(name: str) -> str:
    return name.split("_")[0] if name.startswith("person") else "-".join(name.split("-")[:2])


def match_pneumonia_val(kermany: Path) -> list[tuple[str, int]]:
    """(224 px file, label) for the PneumoniaMNIST val images whose original is found with confidence."""
    data = np.load(BUNDLED / "medmnist" / "pneumoniamnist_no_test.npz")
    val, labels = data["val_images"], data["val_labels"].reshape(-1)
    files = sorted(glob.glob(str(kermany / "*" / "*.jpeg")))
    images = [Image.open(f).convert("L") for f in files]
    v = _norm(val)
    best = np.full((len(val), len(files)), -1.0)
    for ratio in np.arange(0.55, 1.001, 0.05):  # MedMNIST centre-cropped the originals; the 224 px copies were squashed
        crops = []
        for im in images:
            width = int(round(im.width * ratio))
            left = (im.width - width) // 2
            crops.append(np.asarray(im.crop((left, 0, left + width, im.height)).resize((28, 28), Image.BICUBIC)))
        best = np.maximum(best, v @ _norm(np.stack(crops)).T / v.shape[1])
    order = np.argsort(-best, axis=1)
    rows = np.arange(len(val))
    first, second = best[rows, order[:, 0]], best[rows, order[:, 1]]
    chosen = [(files[order[i, 0]], int(labels[i])) for i in rows if first[i] > 0.97 and first[i] - second[i] > 0.05]
    label_of = {f: int("/PNEUMONIA/" in f) for f in files}
    assert all(label_of[f] == y for f, y in chosen), "a match disagrees with the PneumoniaMNIST label"
    per_patient = Counter(patient(Path(f).name) for f in files)
    matched = Counter(patient(Path(f).name) for f, _ in chosen)
    return sorted((f, y) for f, y in chosen if matched[patient(Path(f).name)] == per_patient[patient(Path(f).name)])


def _write(folder: Path, items: list[dict], readme: str, licences: list[Path]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    lines = []
    for item in items:
        image: Image.Image | Path = item.pop("_image")
        name = f"images/{item['image_name']}"
        if not (folder / name).exists():
            if isinstance(image, Path):  # a file kept exactly as released (no re-encoding)
                shutil.copyfile(image, folder / name)
            else:
                image.save(folder / name, format="PNG", optimize=True)
        item["image"] = name
        del item["image_name"]
        lines.append(json.dumps(item, ensure_ascii=False))
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "README.md").write_text(readme)
    with (folder / "LICENSE.md").open("w") as handle:
        for path in licences:
            handle.write(path.read_text() + "\n")


def yes_no(item_id: str, image_name: str, image: Image.Image | Path, question: str, truth: bool, paraphrases: list[str],
           flipped: str, groups: dict) -> dict:
    return {"id": item_id, "question": question, "answer": "yes" if truth else "no", "kind": "closed",
            "image_name": image_name, "_image": image, "paraphrases": paraphrases, "flipped": flipped,
            "groups": {**groups, "question_type": "yes/no"}}


def closed(item_id: str, image_name: str, image: Image.Image | Path, question: str, answer: str, groups: dict) -> dict:
    return {"id": item_id, "question": question, "answer": answer, "kind": "closed", "image_name": image_name,
            "_image": image, "groups": groups}


@dataclass(frozen=True)
class TwoClassQuestions:
    """What is asked of every image of a two-class set: a yes / no question (two paraphrases, a flipped twin)
    whose answer is yes for the positive class, and a question answered with the class name."""

    key: str  # id suffix of the yes / no item
    question: str
    paraphrases: tuple[str, str]
    flipped: str
    choice: str
    names: tuple[str, str]  # class names: (positive, negative)

    def items(self, stem: str, name: str, image: Image.Image | Path, positive: bool, groups: dict) -> list[dict]:
        return [yes_no(f"{stem}/{self.key}", name, image, self.question, positive, list(self.paraphrases),
                       self.flipped, groups),
                closed(f"{stem}/choice", name, image, self.choice, self.names[0] if positive else self.names[1],
                       {**groups, "question_type": "class name"})]


PNEUMONIA = TwoClassQuestions("pneumonia", "Is there pneumonia?", (
    "Does this chest X-ray show pneumonia? Answer yes or no.", "Is pneumonia visible on this radiograph?"),
    "Is this chest X-ray normal?", "Is this chest X-ray normal, or does it show pneumonia?", ("pneumonia", "normal"))
MALIGNANT = TwoClassQuestions("malignant", "Is this breast lesion malignant?", (
    "Does this breast ultrasound show a malignant lesion? Answer yes or no.",
    "Would you call this breast ultrasound malignant?"), "Is this breast lesion benign?",
    "Is this breast ultrasound benign or malignant?", ("malignant", "benign"))


def train_judge(corpus: Path) -> None:
    """The independent judge (modality and pneumonia heads, real train images only) as the bundled extractor."""
    from unimedvl.eval.classifier import build_judge
    from unimedvl.eval.features import JudgeExtractor

    modality, pneumonia, facts = build_judge(corpus)
    facts = {"modality_width": 2, "grid": 4, "trained_on": "the train split of recipes/unimedvl-tiny/corpus.yaml "
             "(real images only, 64 px)", **{k: v for k, v in facts.items() if not isinstance(v, dict)}}
    JudgeExtractor.from_models(modality, pneumonia, facts).save(REPO / "src" / "unimedvl" / "assets" / "judge")
    print(f"judge: {json.dumps(facts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kermany", type=Path, required=True,
                        help="a folder holding the Kermany training split at 224 px (CC BY 4.0; only needed to rebuild the bundled sets)")
    parser.add_argument("--judge", type=Path, default=None,
                        help="also train the judge / proxy feature extractor on this built corpus (the v1 corpus: "
                             "`unimedvl data build recipes/unimedvl-tiny/corpus.yaml`) into assets/judge/")
    args = parser.parse_args()
    if args.judge is not None:
        train_judge(args.judge)
    cxr_licence = args.kermany / "LICENSE.md"
    mnist_licence = BUNDLED / "medmnist" / "LICENSE.md"

    matched = match_pneumonia_val(args.kermany)
    normals = [m for m in matched if m[1] == 0]
    pneumonias = [m for m in matched if m[1] == 1][: len(normals)]
    cxr = sorted(normals + pneumonias)
    items = [item for path, label in cxr for item in PNEUMONIA.items(
        Path(path).stem, Path(path).name, Path(path), bool(label),
        {"modality": "chest_xray", "label": "pneumonia" if label else "normal"})]
    _write(OUT / "cxr-pneumonia", items,
           "# cxr-pneumonia: paediatric chest X-rays at 224 px, held out from UniMedVL-tiny v1 and v2\n\n"
           f"{len(cxr)} real images ({len(normals)} normal, {len(pneumonias)} pneumonia) of the Kermany training "
           "split at 224 px whose 28 px copies are PneumoniaMNIST's val split, matched image to image; every other "
           "image of these patients is in the set too. Per image: a yes / no question with two unseen paraphrases and "
           "a polarity-flipped twin, and a class-name question. Built by scripts/build_eval_sets.py. "
           "Licence: CC BY 4.0 (Kermany et al. 2018; see LICENSE.md).\n", [cxr_licence])

    breast = np.load(BUNDLED / "medmnist" / "breastmnist_no_test.npz")
    items = [item for index, (array, label) in enumerate(zip(breast["val_images"], breast["val_labels"].reshape(-1)))
             for item in MALIGNANT.items(f"val{index:03d}", f"breastmnist_val_{index:03d}.png",
                                         Image.fromarray(array).convert("RGB"), int(label) == 0,
                                         {"modality": "ultrasound",
                                          "label": "malignant" if int(label) == 0 else "benign or normal"})]
    _write(OUT / "breast-ultrasound", items,
           "# breast-ultrasound: BreastMNIST's val split (28 px), held out from UniMedVL-tiny v1 and v2\n\n"
           f"{len(breast['val_images'])} real breast ultrasound images (label 0 malignant, 1 normal or benign; a "
           "normal breast counts as benign here). Per image: a yes / no question with two unseen paraphrases and a "
           "polarity-flipped twin, and a class-name question. Licence: CC BY 4.0 (MedMNIST v2, Yang et al. 2023; "
           "see LICENSE.md).\n", [mnist_licence])

    items = []
    for path, _ in cxr[::4]:
        items.append(closed(f"{Path(path).stem}/modality", Path(path).name, Path(path),
                            "What imaging modality is this?", "X-ray", {"modality": "chest_xray"}))
    for index in range(0, len(breast["val_images"]), 4):
        items.append(closed(f"breastmnist_val_{index:03d}/modality", f"breastmnist_val_{index:03d}.png",
                            Image.fromarray(breast["val_images"][index]).convert("RGB"), "What imaging modality is this?",
                            "Ultrasound", {"modality": "ultrasound"}))
    for name, modality in sorted(MSD_HELD_OUT.items()):
        items.append(closed(f"{Path(name).stem}/modality", name, BUNDLED / "msd-nih-slices" / name,
                            "What imaging modality is this?", MODALITY_ANSWER[modality], {"modality": modality}))
    _write(OUT / "modality", items,
           "# modality: which imaging modality, on held-out real images\n\n"
           "Every fourth image of cxr-pneumonia and breast-ultrasound, and the MSD slices the v1 corpus held out "
           "(2 MRI, 1 CT). Licences: CC BY 4.0 (Kermany; MedMNIST), CC BY-SA 4.0 (MSD slices); see LICENSE.md.\n",
           [cxr_licence, mnist_licence, BUNDLED / "msd-nih-slices" / "LICENSE.md"])
    for folder in sorted(OUT.iterdir()):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder.name}: {sum(1 for _ in (folder / 'items.jsonl').open())} items, {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
