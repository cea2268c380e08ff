"""Helpers shared by the data tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from unimedvl.assets import SAMPLE_CORPUS_CONFIG

SAMPLE_DATA = SAMPLE_CORPUS_CONFIG.parent


def write_config(folder: Path, sources: list[dict], **extra: object) -> Path:
    """A build config with inline sources (paths relative to `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"name": "test-corpus", "seed": 0, "deid_salt": "test-salt", "sources": sources, "chunk_size": 64,
            "shard_rows": 500, "workers": 1, **extra}
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def small_sources(limit: int = 120) -> list[dict]:
    """Real bundled data, small: a slice of PneumoniaMNIST and BreastMNIST plus the MSD/NIH slices."""
    return [
        {"name": "pneumonia", "adapter": "medmnist", "path": str(SAMPLE_DATA / "medmnist/pneumoniamnist_no_test.npz"),
         "modality": "chest_xray", "licence": "CC-BY-4.0", "limit": limit, "tasks": ["vqa", "caption", "text_to_image"],
         "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"}}},
        {"name": "breast", "adapter": "medmnist", "path": str(SAMPLE_DATA / "medmnist/breastmnist_no_test.npz"),
         "modality": "ultrasound", "licence": "CC-BY-4.0", "limit": limit // 2, "tasks": ["vqa", "text_to_image"],
         "options": {"label_names": {0: "a malignant lesion", 1: "a benign lesion"}}},
        {"name": "msd", "adapter": "image_table", "path": str(SAMPLE_DATA / "msd-nih-slices"), "licence": "CC-BY-SA-4.0",
         "tasks": ["vqa", "caption", "super_resolution"], "options": {"table": "labels.csv"}},
    ]


def copy_images(dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SAMPLE_DATA / "msd-nih-slices" / name, dst / name)


def plan_kinds(sample) -> list[tuple]:  # noqa: ANN001
    """A sample's packed segments through the one mapping (`train.packer.plan_sample`), as short tuples:
    ("text", loss), ("vit",) or ("latent", noisy)."""
    from unimedvl.assets import REFERENCE_TINY
    from unimedvl.config import ImageConfig, UnifiedConfig
    from unimedvl.model.packing import TextSegment, VitSegment
    from unimedvl.text.tokenizer import TextTokenizer
    from unimedvl.train.packer import plan_sample

    sizes = ImageConfig.trained(vit_max=56, vit_min=28, vae_max=64, vae_min=32)
    segments = plan_sample(sample, TextTokenizer.from_dir(REFERENCE_TINY), sizes, UnifiedConfig.tiny())
    return [("text", s.loss) if isinstance(s, TextSegment) else ("vit",) if isinstance(s, VitSegment)
            else ("latent", s.noisy) for s in segments]
