"""An independent image classifier, trained on real corpus images, to judge generated images.

A small CNN (no weights shared with UniMedVL) on 64x64 RGB predicts the modality (8 classes) and,
for chest X-rays, pneumonia vs none. Trained on the train split's real images (not generated ones);
its accuracy on the real test images is reported beside the recognition rate of generated images.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unimedvl.data.schema import MODALITIES
from unimedvl.data.storage import iter_samples
from unimedvl.images import load_image, to_tensor

SIZE = 64


def image_tensor(image: Image.Image) -> torch.Tensor:
    return to_tensor(load_image(image).resize((SIZE, SIZE), Image.BICUBIC))


class SmallCNN(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@dataclass
class Labelled:
    pixels: torch.Tensor
    modality: int
    pneumonia: int  # -1 unless a chest X-ray with a known pneumonia label


def collect(corpus, splits: tuple[str, ...], per_modality: int = 400) -> list[Labelled]:  # noqa: ANN001
    seen, counts, out = set(), {m: 0 for m in MODALITIES}, []
    for sample in (s for split in splits for s in iter_samples(corpus, split)):
        ref = sample.images()[0] if sample.images() else None
        if ref is None or ref.sha256 in seen or counts[sample.modality] >= per_modality:
            continue
        seen.add(ref.sha256)
        counts[sample.modality] += 1
        label = str(sample.provenance.get("label_id", ""))
        pneumonia = int(label) if sample.source == "pneumoniamnist" and label in ("0", "1") else -1
        out.append(Labelled(image_tensor(Image.open(io.BytesIO(ref.data))), MODALITIES.index(sample.modality), pneumonia))
    return out


def train_classifier(data: list[Labelled], *, epochs: int = 8, seed: int = 0) -> tuple[SmallCNN, SmallCNN]:
    """Two heads of the same design: modality (8 classes) and pneumonia (2 classes, CXR only)."""
    torch.manual_seed(seed)
    models = []
    for target in ("modality", "pneumonia"):
        rows = [d for d in data if target == "modality" or d.pneumonia >= 0]
        classes = len(MODALITIES) if target == "modality" else 2
        model = SmallCNN(classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        counts = torch.bincount(torch.tensor([getattr(d, target) for d in rows]), minlength=classes).float()
        weights = (counts.sum() / counts.clamp(min=1)) / classes  # balance rare modalities
        rng = random.Random(seed)
        for _ in range(epochs):
            rng.shuffle(rows)
            for start in range(0, len(rows), 32):
                batch = rows[start:start + 32]
                x = torch.stack([d.pixels for d in batch])
                y = torch.tensor([getattr(d, target) for d in batch])
                loss = F.cross_entropy(model(x), y, weight=weights)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        models.append(model.eval())
    return models[0], models[1]


@torch.no_grad()
def accuracy(model: SmallCNN, data: list[Labelled], target: str) -> float:
    rows = [d for d in data if target == "modality" or d.pneumonia >= 0]
    if not rows:
        return float("nan")
    predictions = model(torch.stack([d.pixels for d in rows])).argmax(-1)
    return float((predictions == torch.tensor([getattr(d, target) for d in rows])).float().mean())


@torch.no_grad()
def predict(model: SmallCNN, images: list[Image.Image]) -> list[int]:
    return model(torch.stack([image_tensor(i) for i in images])).argmax(-1).tolist()


def build_judge(corpus, *, epochs: int = 8) -> tuple[SmallCNN, SmallCNN, dict]:  # noqa: ANN001
    """Train both heads on the train split's real images; report their accuracy on the held-out ones."""
    train = collect(corpus, ("train",))
    held_out = collect(corpus, ("val", "test"), per_modality=200)
    modality_model, pneumonia_model = train_classifier(train, epochs=epochs)
    return modality_model, pneumonia_model, {
        "modality_accuracy_real_test": accuracy(modality_model, held_out, "modality"),
        "pneumonia_accuracy_real_test": accuracy(pneumonia_model, held_out, "pneumonia"),
        "train_images": len(train), "test_images": len(held_out)}
