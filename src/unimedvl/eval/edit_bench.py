"""`unimedvl eval edits`: image-to-image tasks on held-out corpus pairs, against the obvious baseline.

Each held-out sample of the task (a built corpus' val / test splits: real images of patients the
model never saw) gives an input image, the instruction it was built with, and the target image.
The model edits at the output side `size` (default: the largest side the checkpoint generated at in
training, else its default size); the input is fed at the size the trainer fed it (scaled as the
target was, so a x2 super-resolution input arrives at half the output side). The output and the
baseline are scored against the target resized to the output size (PSNR and SSIM, 8-bit RGB):

* super_resolution: bicubic up-sampling of the same low-resolution input;
* virtual_staining, cross_modal, counterfactual: the identity (the input itself, resized).

Per modality: the model's mean, the baseline's mean, and on how many images the model beat it. Beside
them, two ceilings of the checkpoint's own VAE, computed from the answer itself: the target encoded and
decoded (no output decoded by this VAE is expected to score above it), and the baseline corrected by the
decoded difference of the target's and the baseline's latents (the best a latent edit added to the
baseline could do). When both ceilings sit at or below the baseline, the task is out of this VAE's
reach, whatever the generator learns.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from unimedvl.data.schema import Sample
from unimedvl.data.storage import iter_samples
from unimedvl.errors import InputError
from unimedvl.eval.metrics.image import psnr, ssim
from unimedvl.eval.reconstruction import round_trip
from unimedvl.imaging.pixels import load_image, to_tensor, to_uint8
from unimedvl.imaging.resize import resize_by
from unimedvl.utils.files import atomic_write_text

EDIT_TASKS = ("super_resolution", "virtual_staining", "cross_modal", "counterfactual")
BASELINE = {"super_resolution": "bicubic"}


def held_out_pairs(corpus: Path, task: str, splits: tuple[str, ...] = ("val", "test"),
                   per_modality: int | None = None) -> list[tuple[Sample, Image.Image, str, Image.Image]]:
    """(sample, input image, instruction, target image) of the task's held-out samples, in corpus order."""
    if task not in EDIT_TASKS:
        raise InputError(f"unknown edit task {task!r}; choose one of {', '.join(EDIT_TASKS)}")
    if not (Path(corpus) / "manifest.json").is_file():
        raise InputError(f"{corpus} is not a built corpus (no manifest.json)")
    rows, count = [], defaultdict(int)
    for split in splits:
        for sample in iter_samples(corpus, split):
            if sample.task != task or (per_modality is not None and count[sample.modality] >= per_modality):
                continue
            source = next(it for it in sample.items if it.kind == "image" and not it.loss)
            target = next(it for it in sample.items if it.kind == "image" and it.loss)
            text = next(it.text for it in sample.items if it.kind == "text" and not it.loss)
            rows.append((sample, load_image(Image.open(io.BytesIO(source.image.data))), text or "",  # type: ignore[union-attr]
                         load_image(Image.open(io.BytesIO(target.image.data)))))  # type: ignore[union-attr]
            count[sample.modality] += 1
    if not rows:
        raise InputError(f"{corpus} has no held-out {task} samples in {', '.join(splits)}")
    return rows


def vae_ceilings(vae, target: Image.Image, baseline: Image.Image) -> tuple[Image.Image, Image.Image]:  # noqa: ANN001
    """(target encoded and decoded, baseline + decoded(target) - decoded(baseline)) through `vae`."""
    pixels = torch.stack([to_tensor(target), to_tensor(baseline)])
    decoded = round_trip(vae, pixels)
    residual = (pixels[1] + decoded[0] - decoded[1]).clamp(-1, 1)
    return Image.fromarray(to_uint8(decoded[0])), Image.fromarray(to_uint8(residual))


def sized_pair(source: Image.Image, target: Image.Image, side: int, stride: int
               ) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(target at output side `side`, the input scaled as the target was, as the trainer feeds it
    (train/packer.py), and that input up-sampled bicubically to the target's size: bicubic / the identity)."""
    scale = side / max(target.size)
    target_sized = resize_by(target, scale, stride)
    fed = resize_by(source, scale, stride)
    return target_sized, fed, fed.resize(target_sized.size, Image.BICUBIC)


def evaluate_edits(engine, corpus: Path, out: Path, *, task: str = "super_resolution", size: int | None = None,  # noqa: ANN001
                   steps: int = 20, per_modality: int | None = 20, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    pairs = held_out_pairs(corpus, task, per_modality=per_modality)
    sizes = engine.image_config.generation_sizes
    side = size or (max(sizes) if sizes else engine.image_config.default_size)
    stride = engine.config.latent_downsample
    guidance = engine.guidance("editing", num_timesteps=steps, timestep_shift=1.0)
    baseline = BASELINE.get(task, "identity")
    per_image: list[dict] = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for index, (sample, source, text, target) in enumerate(pairs):
        target_sized, fed, reference = sized_pair(source, target, side, stride)
        edited = engine.edit(fed, text, guidance=guidance, seed=seed, height=target_sized.height,
                             width=target_sized.width)
        edited.save(out / "images" / f"{index:04d}-{sample.modality}.png")
        round_trip, residual = vae_ceilings(engine.vae, target_sized, reference)
        per_image.append({"id": sample.id, "modality": sample.modality, "source": sample.source,
                          "size": list(target_sized.size), "input_size": list(fed.size),
                          "psnr": psnr(edited, target_sized), "ssim": ssim(edited, target_sized),
                          f"{baseline}_psnr": psnr(reference, target_sized),
                          f"{baseline}_ssim": ssim(reference, target_sized),
                          "vae_round_trip_psnr": psnr(round_trip, target_sized),
                          "vae_residual_psnr": psnr(residual, target_sized)})
        if progress:
            progress(index + 1, len(pairs))
    per_modality_rows: dict[str, dict] = {}
    for modality in sorted({r["modality"] for r in per_image}):
        rows = [r for r in per_image if r["modality"] == modality]
        mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        per_modality_rows[modality] = {
            "n": len(rows), "psnr": mean("psnr"), "ssim": mean("ssim"),
            f"{baseline}_psnr": mean(f"{baseline}_psnr"), f"{baseline}_ssim": mean(f"{baseline}_ssim"),
            "vae_round_trip_psnr": mean("vae_round_trip_psnr"), "vae_residual_psnr": mean("vae_residual_psnr"),
            "residual_beats_baseline_psnr": int(sum(bool(r["vae_residual_psnr"] > r[f"{baseline}_psnr"]) for r in rows)),
            "beats_baseline_psnr": int(sum(bool(r["psnr"] > r[f"{baseline}_psnr"]) for r in rows))}
    results = {"task": task, "baseline": baseline, "size": side, "steps": steps, "seed": seed, "corpus": str(corpus),
               "splits": ["val", "test"], "per_modality": per_modality_rows, "per_image": per_image,
               "protocol": "target resized to the output side; PSNR / SSIM on 8-bit RGB (data range 255, SSIM 7x7 "
                           "uniform window); the input fed as the trainer feeds it; VAE ceilings through the checkpoint's own "
                           "VAE (posterior mean)"}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results
