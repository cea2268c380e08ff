"""Held-out losses go through the trainer's own packer and objective: finite, repeatable, and lower for a trained model."""

from __future__ import annotations

import math
from pathlib import Path

from unimedvl.assets import REFERENCE_TINY, UNIMEDVL_TINY
from unimedvl.eval.heldout import heldout_losses
from unimedvl.inference.engine import UniMedVL
from unimedvl.train.config import DataConfig


def test_heldout_losses_separate_a_trained_model_from_random_weights(train_corpus: Path) -> None:
    data = DataConfig(tokens_per_pack=160, max_tokens_per_sample=200)
    random_weights = UniMedVL.from_pretrained(REFERENCE_TINY)
    first = heldout_losses(random_weights, str(train_corpus), split="train", packs=2, data=data)
    assert set(first) == {"ce_per_token", "mse_per_token"} and all(math.isfinite(v) and v > 0 for v in first.values())
    assert heldout_losses(random_weights, str(train_corpus), split="train", packs=2, data=data) == first
    trained = heldout_losses(UniMedVL.from_pretrained(UNIMEDVL_TINY), str(train_corpus), split="train", packs=2, data=data)
    assert trained["ce_per_token"] < 0.5 * first["ce_per_token"]


def test_the_corpus_evaluation_writes_its_report(tmp_path: Path) -> None:
    import json

    import yaml

    from unimedvl.assets import SAMPLE_CORPUS_CONFIG
    from unimedvl.data.pipeline import BuildConfig, build_corpus
    from unimedvl.eval.corpus_eval import evaluate_on_corpus

    data = SAMPLE_CORPUS_CONFIG.parent
    config = {"name": "eval-test", "seed": 0, "deid_salt": "x", "chunk_size": 100,
              "sources": [{"name": "pneumoniamnist", "adapter": "medmnist", "licence": "CC-BY-4.0", "limit": 160,
                           "path": str(data / "medmnist/pneumoniamnist_no_test.npz"), "modality": "chest_xray",
                           "tasks": ["vqa", "text_to_image"], "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"},
                                                                            "splits": ["train", "val"]}},
                          {"name": "msd", "adapter": "image_table", "path": str(data / "msd-nih-slices"),
                           "licence": "CC-BY-SA-4.0", "tasks": ["vqa", "text_to_image"], "options": {"table": "labels.csv"}}],
              "splits": {"train": 0.5, "val": 0.1, "test": 0.4}}
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(config))
    corpus = tmp_path / "corpus"
    build_corpus(BuildConfig.from_yaml(tmp_path / "build.yaml"), corpus, workers=1, log=lambda m: None)
    report = evaluate_on_corpus(REFERENCE_TINY, corpus, tmp_path / "eval", quick=True)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(saved) >= {"vqa", "classifier", "generation", "vae_reconstruction", "heldout"}
    assert saved["vqa"] == report["vqa"] and "| question type |" in (tmp_path / "eval" / "eval.md").read_text()
