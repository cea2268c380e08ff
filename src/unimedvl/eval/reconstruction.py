"""How well does a model's VAE reproduce real images, per modality?

Generation can be no better than the autoencoder it decodes through, so the evaluation reports, on
held-out images at the generation size: the mean absolute error of encode -> decode (pixels in
[-1, 1]) and the colourfulness in and out (mean over pixels of the standard deviation across R, G, B:
0 for a grey image). A VAE that paints colour images grey shows colour_out far below colour_in.
Given the judge, it also reports how many images the judge recognises before and after the round
trip: what is lost there no generator decoding through this VAE can win back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unimedvl.data.schema import MODALITIES
from unimedvl.eval.classifier import SmallCNN, collect
from unimedvl.model.vae import AutoEncoder


@dataclass(frozen=True)
class Reconstruction:
    images: int
    l1: float
    colour_in: float
    colour_out: float
    recognised_in: float | None = None  # the judge's recall on the real images, then on their round trip
    recognised_out: float | None = None


def colourfulness(pixels: torch.Tensor) -> float:
    """Mean over pixels of the per-pixel standard deviation across channels, for a batch (B, 3, H, W)."""
    return float(pixels.std(dim=1, unbiased=False).mean())


def held_out_images(corpus: str | Path, splits: tuple[str, ...] = ("val", "test"), per_modality: int = 32,
                    size: int = 64) -> dict[str, torch.Tensor]:
    """The judge's real images (`classifier.collect`), grouped by modality name."""
    grouped: dict[str, list[torch.Tensor]] = {}
    for row in collect(corpus, splits, per_modality, size=size):
        grouped.setdefault(MODALITIES[row.modality], []).append(row.pixels)
    return {m: torch.stack(v) for m, v in sorted(grouped.items())}


@torch.no_grad()
def round_trip(vae: AutoEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """Encode then decode a batch `(B, 3, H, W)` in [-1, 1] on the VAE's device and dtype -> fp32 on the CPU."""
    parameter = next(vae.parameters())
    return vae.decode(vae.encode(pixels.to(parameter.device, parameter.dtype))).float().clamp(-1, 1).cpu()


@torch.no_grad()
def reconstruction_by_modality(vae: AutoEncoder, images: dict[str, torch.Tensor],
                               judge: SmallCNN | None = None) -> dict[str, Reconstruction]:
    result = {}
    for modality, pixels in images.items():
        decoded = round_trip(vae, pixels)
        recognised = [None, None]
        if judge is not None:
            wanted = MODALITIES.index(modality)
            recognised = [round(float((judge(x).argmax(-1) == wanted).float().mean()), 3) for x in (pixels, decoded)]
        result[modality] = Reconstruction(len(pixels), round(float((decoded - pixels).abs().mean()), 4),
                                          round(colourfulness(pixels), 4), round(colourfulness(decoded), 4),
                                          *recognised)
    return result
