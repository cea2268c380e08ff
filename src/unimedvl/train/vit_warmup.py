"""Supervised warm start of the vision encoder, before the curriculum's first stage.

Five full UniMedVL-tiny runs scored 77-87 % on held-out chest X-rays and below the majority on breast
ultrasound, while a ViT of the same size trained alone with a linear head separates both sets at 56 px
(87-91 % and 83 %; scripts/vit_probe.py). The curriculum, where class questions are a few per cent of
the samples, does not teach the encoder what tells the classes apart. This step does, first: the
model's own ViT (same config, same initialisation) plus a linear head over every (source, label) class
of the corpus's training images, mean-pooled patch features, cross-entropy. Draws pick a source
uniformly, then a class of it uniformly, then an image of it; images are read as the stages read them
(the ViT's side, the same random crop / resolution / intensity augmentation). Images without a label
form one class per source and modality, so the head also tells modalities apart.

Writes `model.safetensors` in the Hugging Face SigLIP layout (`vision_model.*`, the patch embedding in
linear form, which the loader's key map accepts as is), loaded by stage 1 as `model.vit`;
`head.safetensors` (the linear classifier, to probe the encoder) and `warmup.json` (its classes in
order, final loss and training accuracy). Every draw is seeded per step.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from safetensors.torch import save

from unimedvl.config import ViTConfig
from unimedvl.data.storage import iter_samples
from unimedvl.errors import ConfigError
from unimedvl.imaging.augment import augment_for_reading
from unimedvl.imaging.pixels import load_image, to_tensor
from unimedvl.model.packing import grid_position_ids, patchify
from unimedvl.model.siglip_navit import SiglipNaViT
from unimedvl.train.config import VitWarmup
from unimedvl.utils.files import atomic_write_bytes, atomic_write_text

WEIGHTS = "model.safetensors"
HEAD = "head.safetensors"


def labelled_images(corpus: str | Path, split: str = "train") -> dict[str, dict[str, list[bytes]]]:
    """source -> class -> the distinct images the ViT reads in that source's understanding samples.

    The class is the label the sample was made from or, for sources without labels, the image's modality
    (one table of slices may hold CT, MRI and X-ray); an image keeps the first class it is seen with. Sorted at both levels, so draws do not depend on shard order.
    """
    seen: set[str] = set()
    out: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for sample in iter_samples(corpus, split):
        if sample.family != "understanding":
            continue
        label = str(sample.provenance.get("label") or sample.modality)
        for item in sample.items:
            ref = item.image
            if ref is None or "vit" not in (item.use or "") or ref.sha256 in seen:
                continue
            seen.add(ref.sha256)
            out.setdefault(sample.source, {}).setdefault(label, []).append((ref.sha256, ref.data))
    return {source: {label: [data for _, data in sorted(rows)] for label, rows in sorted(classes.items())}
            for source, classes in sorted(out.items())}


class _Reader:
    """Decodes each image once (kept at `keep_side` on its short side), then reads it as a stage would."""

    def __init__(self, side: int, keep_side: int, augment: float) -> None:
        self.side, self.keep_side, self.augment = side, keep_side, augment
        self.cache: dict[int, Image.Image] = {}

    def __call__(self, key: Any, data: bytes, rng: random.Random) -> torch.Tensor:
        image = self.cache.get(key)
        if image is None:
            image = load_image(Image.open(io.BytesIO(data)))
            scale = self.keep_side / min(image.size)
            if scale < 1:
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.BICUBIC)
            self.cache[key] = image
        if self.augment and rng.random() < self.augment:
            image = augment_for_reading(image, rng)
        return to_tensor(image.resize((self.side, self.side), Image.BICUBIC))


def init_vit(config: ViTConfig, seed: int) -> SiglipNaViT:
    """A fresh ViT, initialised as a stage built from scratch initialises its layers (`init_weights`)."""
    from unimedvl.train.init import init_weights

    vit = SiglipNaViT(config)
    init_weights(vit, torch.Generator().manual_seed(seed))
    return vit


def train_vit_warmup(corpus: str | Path, out: str | Path, config: ViTConfig, settings: VitWarmup, *, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> Path:
    """Train the ViT on the corpus labels; write `out/model.safetensors` and `out/warmup.json`."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if settings.side % config.patch_size:
        raise ConfigError(f"vit_warmup.side {settings.side} is not a multiple of the patch size {config.patch_size}")
    images = labelled_images(corpus)
    classes = [(source, label) for source, by_label in images.items() for label in by_label]
    if len(classes) < 2:
        raise ConfigError(f"{corpus}: the ViT warm start needs at least two classes of images, found {len(classes)}")
    class_index = {key: k for k, key in enumerate(classes)}
    sources = list(images)
    labels = {source: list(by_label) for source, by_label in images.items()}  # sorted by labelled_images
    torch.manual_seed(seed)
    vit = init_vit(config, seed).train()
    head = torch.nn.Linear(config.hidden_size, len(classes))
    params = list(vit.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    reader = _Reader(settings.side, settings.keep_side, settings.augment)
    grid = settings.side // config.patch_size
    positions = grid_position_ids(grid, grid, config.image_size // config.patch_size)
    tokens = grid * grid
    say(f"vit warm start: {len(classes)} classes from {len(sources)} sources, "
        f"{sum(len(v) for c in images.values() for v in c.values())} images, {settings.steps} steps of {settings.batch}")
    started, recent_loss, recent_hits = time.perf_counter(), [], []
    for step in range(settings.steps):
        rng = random.Random(f"{seed}/vit-warmup/{step}")
        batch, targets = [], []
        for _ in range(settings.batch):
            source = sources[rng.randrange(len(sources))]
            label = labels[source][rng.randrange(len(labels[source]))]
            pool = images[source][label]
            pick = rng.randrange(len(pool))
            batch.append(patchify(reader((source, label, pick), pool[pick], rng), config.patch_size))
            targets.append(class_index[(source, label)])
        features = vit(torch.cat(batch), positions.repeat(len(batch)), [tokens] * len(batch))
        logits = head(features.view(len(batch), tokens, -1).mean(1))
        target = torch.tensor(targets)
        loss = torch.nn.functional.cross_entropy(logits, target)
        for group in optimizer.param_groups:
            # cosine to a tenth; kept as written (schedule.cosine_factor differs by an ulp at some steps, and the
            # shipped model was trained with this form)
            group["lr"] = settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / settings.steps)))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        recent_loss = (recent_loss + [float(loss.detach())])[-100:]
        recent_hits = (recent_hits + [float((logits.argmax(-1) == target).float().mean())])[-100:]
        if (step + 1) % 100 == 0 or step + 1 == settings.steps:
            say(f"vit warm start step {step + 1}/{settings.steps}: loss {sum(recent_loss) / len(recent_loss):.3f}, "
                f"training accuracy {sum(recent_hits) / len(recent_hits):.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in ((WEIGHTS, vit), (HEAD, head)):  # the head only probes the encoder; stages do not load it
        tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        atomic_write_bytes(out / name, save(tensors, metadata={"format": "pt"}))
    report = {"classes": [f"{s}/{lab}" for s, lab in classes], "steps": settings.steps,
              "settings": dataclasses.asdict(settings), "seed": seed,
              "final_loss": round(sum(recent_loss) / len(recent_loss), 4),
              "final_training_accuracy": round(sum(recent_hits) / len(recent_hits), 4),
              "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(out / "warmup.json", json.dumps(report, indent=2) + "\n")
    return out / WEIGHTS
