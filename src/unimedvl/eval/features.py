"""Image features for FID-style scores, and image-text / finding scores, from a network of our own.

No Inception, CLIP or BiomedCLIP weights ship in any package this project can install offline, so
the bundled extractor is the independent judge of `classifier.py` (a small CNN trained only on real
images, no weights shared with UniMedVL): its features pooled to a 4x4 grid (2048 values) give a
**proxy FID**, its modality head a **proxy image-text score** (the probability it gives the
requested modality), its pneumonia head a finding classifier. Every report names them proxies and
records the weights' SHA-256, so a number reproduces to the last digit with the same file.

The weights live in `assets/judge/` (`judge.safetensors` + `judge.json`), written by
`JudgeExtractor.save` (`scripts/build_eval_sets.py --judge CORPUS`), read through the strict loader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from unimedvl.checkpoint.weights import KeyMap, load_weights
from unimedvl.data.schema import MODALITIES
from unimedvl.errors import CheckpointError
from unimedvl.eval.classifier import SIZE, SmallCNN, image_tensor

WEIGHTS, CONFIG = "judge.safetensors", "judge.json"


class _Heads(nn.Module):
    def __init__(self, width: int, grid: int) -> None:
        super().__init__()
        self.modality = SmallCNN(len(MODALITIES), width=width, grid=grid)
        self.pneumonia = SmallCNN(2, width=1, grid=grid)


@dataclass
class JudgeExtractor:
    heads: _Heads
    sha256: str
    facts: dict
    name: str = "unimedvl judge CNN (proxy; not Inception)"
    proxy: bool = True

    @classmethod
    def from_models(cls, modality: SmallCNN, pneumonia: SmallCNN, facts: dict) -> "JudgeExtractor":
        heads = _Heads(width=facts["modality_width"], grid=facts["grid"])
        heads.modality.load_state_dict(modality.state_dict())
        heads.pneumonia.load_state_dict(pneumonia.state_dict())
        return cls(heads.eval(), sha256="(not saved)", facts=facts)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from unimedvl.utils.files import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS}.tmp"
        save_file({k: v.contiguous() for k, v in self.heads.state_dict().items()}, str(tmp))
        tmp.replace(folder / WEIGHTS)
        atomic_write_text(folder / CONFIG, json.dumps(self.facts, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "JudgeExtractor":
        if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
            raise CheckpointError(f"no judge in {folder}: expected {WEIGHTS} and {CONFIG}")
        facts = json.loads((folder / CONFIG).read_text())
        heads = _Heads(width=int(facts["modality_width"]), grid=int(facts["grid"]))
        load_weights(heads, [folder / WEIGHTS], KeyMap(name=WEIGHTS), dtype=torch.float32, device=torch.device("cpu"))
        digest = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
        return cls(heads.eval(), sha256=digest, facts=facts)

    def _batch(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([image_tensor(i, SIZE) for i in images])

    @torch.no_grad()
    def features(self, images: list[Image.Image]) -> np.ndarray:
        """`[N, 2048]`: the modality network's grid features before its head."""
        return self.heads.modality.features(self._batch(images)).flatten(1).numpy().astype(np.float64)

    @torch.no_grad()
    def modality_probabilities(self, images: list[Image.Image]) -> np.ndarray:
        return torch.softmax(self.heads.modality(self._batch(images)), dim=-1).numpy()

    @torch.no_grad()
    def pneumonia_probability(self, images: list[Image.Image]) -> np.ndarray:
        return torch.softmax(self.heads.pneumonia(self._batch(images)), dim=-1)[:, 1].numpy()


def auroc(scores: list[float] | np.ndarray, labels: list[int] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count half). NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def f1(predicted: list[int] | np.ndarray, labels: list[int] | np.ndarray) -> float:
    p, t = np.asarray(predicted).astype(bool), np.asarray(labels).astype(bool)
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
