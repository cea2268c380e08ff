"""The curriculum's ViT warm start: what it reads from a corpus, that it learns, that stage 1 loads its weights,
and that the vision encoder's learning rate can be scaled."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import write_recipe

from unimedvl.assets import REFERENCE_TINY
from unimedvl.config import UnifiedConfig, ViTConfig
from unimedvl.data.storage import iter_samples
from unimedvl.errors import ConfigError
from unimedvl.train.config import ModelInit, OptimConfig, TrainConfig, VitWarmup
from unimedvl.train.init import build_for_training
from unimedvl.train.trainer import Trainer
from unimedvl.train.vit_warmup import WEIGHTS, labelled_images, train_vit_warmup

VIT = ViTConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2)


def test_labelled_images_are_the_distinct_vit_images_of_understanding_samples(train_corpus: Path) -> None:
    images = labelled_images(train_corpus)
    assert sorted(images) == ["msd", "pneumonia"]
    expected: dict[tuple[str, str], set[str]] = {}
    for sample in iter_samples(train_corpus, "train"):
        if sample.family == "understanding":
            for item in sample.items:
                if item.image is not None and "vit" in item.use:
                    expected.setdefault((sample.source, str(sample.provenance.get("label") or sample.modality)), set()).add(
                        item.image.sha256)
    flat = [data for by_label in images.values() for rows in by_label.values() for data in rows]
    assert len(flat) == len(set(flat))  # each image once
    assert sum(len(v) for v in expected.values()) >= len(flat)  # an image seen under two labels keeps one
    assert {(source, label) for source, by_label in images.items() for label in by_label} == set(expected)
    # a source without labels has one class per modality
    assert sorted(images["msd"]) == sorted({s.modality for s in iter_samples(train_corpus, "train") if s.source == "msd"})
    for (source, label), shas in expected.items():
        assert len(images[source][label]) <= len(shas)


def test_the_warm_start_learns_and_stage_one_loads_its_weights(train_corpus: Path, tmp_path: Path) -> None:
    settings = VitWarmup(steps=60, batch=16, lr=3e-3, side=28, keep_side=56)
    path = train_vit_warmup(train_corpus, tmp_path / "warm", VIT, settings, log=lambda m: None)
    summary = json.loads((tmp_path / "warm" / "warmup.json").read_text())
    classes = summary["classes"]
    assert path.name == WEIGHTS and len(classes) >= 2
    # Sources alone (chest X-ray vs MRI/CT slices) are easy: well above chance after 60 steps.
    assert summary["final_training_accuracy"] > 1.5 / len(classes), summary
    state = load_file(str(path))
    assert all(key.startswith("vision_model.") for key in state)
    # A stage that names the folder as its `model.vit` starts from exactly these weights.
    tiny = UnifiedConfig.preset("tiny")
    config = dataclasses.replace(tiny, vit=dataclasses.replace(tiny.vit, **{
        k: getattr(VIT, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")}))
    config.save_to_dir(tmp_path / "config")
    spec = ModelInit(preset=None, config_dir=str(tmp_path / "config"), tokenizer=str(REFERENCE_TINY), vit=str(path))
    _, model, _, _ = build_for_training(spec, seed=0)
    ours = model.vit_model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_bad_warm_start_settings_are_refused_by_name(train_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vit_warmup.steps"):
        VitWarmup(steps=0)
    with pytest.raises(ConfigError, match="vit_warmup.augment"):
        VitWarmup(augment=1.5)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) sdie"):
        VitWarmup.from_dict({"sdie": 56})
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        train_vit_warmup(train_corpus, tmp_path / "w", VIT, VitWarmup(side=30), log=lambda m: None)


def test_vit_lr_scale_makes_a_second_parameter_group(train_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optim.vit_lr_scale"):
        OptimConfig(vit_lr_scale=-1.0)
    recipe = write_recipe(tmp_path, train_corpus, **{"optim.vit_lr_scale": 0.25, "total_steps": 1})
    trainer = Trainer(TrainConfig.from_yaml(recipe))
    try:
        groups = trainer.optimizer.param_groups
        assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
        vit_ids = {id(p) for p in trainer.model.vit_model.parameters()}
        assert {id(p) for p in groups[1]["params"]} == vit_ids
        trainer.train_step()
        assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.25)
    finally:
        trainer.close()
