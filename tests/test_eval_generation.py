"""Judging generated images (recognition rate and what the judge saw) and the VAE reconstruction report."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from unimedvl.data.schema import MODALITIES
from unimedvl.eval.generation import PROMPTS, evaluate_generation
from unimedvl.eval.reconstruction import colourfulness, held_out_images, reconstruction_by_modality


def _modality_of(prompt: str) -> str:
    return next(m for m, prompts in PROMPTS.items() if prompt in prompts)


class PaintingEngine:
    """Paints every requested image in the grey level of its modality, except MRI, painted as CT."""

    def generate(self, prompt: str, **_: object) -> Image.Image:
        modality = _modality_of(prompt)
        modality = "ct" if modality == "mri" else modality
        level = 20 + 25 * MODALITIES.index(modality)
        return Image.new("RGB", (64, 64), (level, level, level))


class GreyLevelJudge(nn.Module):
    """Reads the grey level back into a modality index (the role of the trained CNN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x.mean(dim=(1, 2, 3)) + 1) * 127.5
        index = ((level - 20) / 25).round().long()
        return torch.nn.functional.one_hot(index, len(MODALITIES)).float()


class AlwaysNoPneumonia(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)


def test_generation_judged_per_modality_with_what_the_judge_saw() -> None:
    result = evaluate_generation(PaintingEngine(), GreyLevelJudge(), AlwaysNoPneumonia(), seeds=2)
    assert result.per_modality["chest_xray"] == 1.0 and result.per_modality["fundus"] == 1.0
    assert result.per_modality["mri"] == 0.0 and result.predicted["mri"] == {"ct": 2}
    assert result.overall == (len(PROMPTS) - 1) / len(PROMPTS)
    assert result.pneumonia == {"with pneumonia": 0.0, "no pneumonia": 1.0}
    assert len(result.images) == 2 * sum(len(p) for p in PROMPTS.values())  # two seeds of each prompt kept


class IdentityVAE(nn.Module):
    def __init__(self, grey: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.grey = grey

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True).expand_as(x) if self.grey else x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_colourfulness_and_reconstruction_report(train_corpus: Path) -> None:
    grey = torch.zeros(1, 3, 4, 4)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert colourfulness(grey) == 0.0 and abs(colourfulness(red) - (8 / 9) ** 0.5) < 1e-6
    images = {"fundus": torch.cat([red, grey]), **held_out_images(train_corpus, ("train",), per_modality=3, size=16)}
    assert all(len(v) <= 3 and v.shape[1:] == (3, 16, 16) for m, v in images.items() if m != "fundus")
    perfect = reconstruction_by_modality(IdentityVAE(), images)
    assert perfect["fundus"].l1 == 0.0 and perfect["fundus"].colour_out == perfect["fundus"].colour_in > 0.4
    greyed = reconstruction_by_modality(IdentityVAE(grey=True), images)
    assert greyed["fundus"].colour_out == 0.0 and greyed["fundus"].l1 > 0.3
    assert greyed["chest_xray"].l1 == 0.0  # grey images survive a grey autoencoder


class ColourJudge(nn.Module):
    """Calls colourful images fundus photographs and grey ones chest X-rays."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colourful = x.std(dim=1, unbiased=False).mean(dim=(1, 2)) > 0.1
        index = torch.where(colourful, MODALITIES.index("fundus"), MODALITIES.index("chest_xray"))
        return torch.nn.functional.one_hot(index, len(MODALITIES)).float()


def test_reconstruction_reports_what_the_judge_still_recognises() -> None:
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8)
    images = {"fundus": red, "chest_xray": torch.zeros(2, 3, 8, 8)}
    kept = reconstruction_by_modality(IdentityVAE(), images, ColourJudge())
    greyed = reconstruction_by_modality(IdentityVAE(grey=True), images, ColourJudge())
    assert (kept["fundus"].recognised_in, kept["fundus"].recognised_out) == (1.0, 1.0)
    assert (greyed["fundus"].recognised_in, greyed["fundus"].recognised_out) == (1.0, 0.0)  # lost in the round trip
    assert greyed["chest_xray"].recognised_out == 1.0
    assert reconstruction_by_modality(IdentityVAE(), images)["fundus"].recognised_in is None  # no judge, no column
