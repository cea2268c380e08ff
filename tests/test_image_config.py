"""One typed ImageConfig: written by a training export, read by loading, honoured by every engine entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.config import ImageConfig, ResizeBounds
from unimedvl.errors import ConfigError
from unimedvl.imaging.resize import UNIMEDVL_GEN_VIT, UNIMEDVL_VAE, UNIMEDVL_VQA_VIT, ResizeRule
from unimedvl.inference.engine import UniMedVL
from unimedvl.model.sampling import GuidanceOptions
from unimedvl.train.config import DataConfig


def test_reference_rules_are_the_released_scripts() -> None:
    ref = ImageConfig.reference()
    assert ResizeRule.from_bounds(ref.understanding_vit, 14) == UNIMEDVL_VQA_VIT
    assert ResizeRule.from_bounds(ref.generation_vit, 14) == UNIMEDVL_GEN_VIT
    assert ResizeRule.from_bounds(ref.vae, 16) == UNIMEDVL_VAE
    assert ref.default_size == 1024


def test_json_round_trip_and_the_training_recipe_agree() -> None:
    data = DataConfig(vit_max=56, vit_min=28, vae_max=64, vae_min=32)
    sizes = data.image_config
    assert sizes.to_json_dict() == {"vae_max": 64, "vae_min": 32, "vit_max": 56, "vit_min": 28, "default_size": 64}
    assert ImageConfig.from_json_dict(sizes.to_json_dict()) == sizes
    with pytest.raises(ConfigError, match="one ViT range"):
        ImageConfig.reference().to_json_dict()  # two ViT rules cannot be written as the 5-key file


@pytest.mark.parametrize("content, message", [
    ({"vae_max": 64, "vae_min": 64, "vit_max": 56, "vit_min": 56}, "missing: default_size"),
    ({"vae_max": 64, "vae_min": 64, "vit_max": 56, "vit_min": 56, "default_size": 64, "dpi": 3}, "unknown: dpi"),
    ({"vae_max": 64, "vae_min": 64, "vit_max": "56", "vit_min": 56, "default_size": 64}, "max_size must be a positive integer"),
    ({"vae_max": 32, "vae_min": 64, "vit_max": 56, "vit_min": 56, "default_size": 64}, "min_size 64 exceeds max_size 32"),
    ({"vae_max": 64, "vae_min": 64, "vit_max": 56, "vit_min": 56, "default_size": 0}, "default_size must be a positive"),
])
def test_bad_image_config_files_are_named(checkpoint_copy: Path, content: dict, message: str) -> None:
    (checkpoint_copy / "image_config.json").write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message) as info:
        load_checkpoint(checkpoint_copy)
    assert "image_config.json" in str(info.value)


def test_recipe_sizes_are_checked() -> None:
    with pytest.raises(ConfigError, match="data image sizes.*min_size 80 exceeds max_size 56"):
        DataConfig(vit_max=56, vit_min=80)


def test_every_engine_entry_point_honours_the_image_config(checkpoint_copy: Path, mri_path: Path) -> None:
    sizes = ImageConfig(understanding_vit=ResizeBounds(56, 28), generation_vit=ResizeBounds(42, 28),
                        vae=ResizeBounds(48, 32), default_size=32)
    (checkpoint_copy / "image_config.json").write_text(json.dumps(
        {"vae_max": 48, "vae_min": 32, "vit_max": 42, "vit_min": 28, "default_size": 32}))
    engine = UniMedVL(load_checkpoint(checkpoint_copy))
    assert engine.image_config.default_size == 32 and engine.gen_vae_rule.max_size == 48
    fast = GuidanceOptions.text_to_image(num_timesteps=2)
    assert engine.generate("A chest X-ray.", guidance=fast).size == (32, 32)
    image, _ = engine.interleave(["A chest X-ray."], guidance=fast)  # was a hard-coded 1024 x 1024
    assert image.size == (32, 32)
    assert engine.edit(mri_path, "Sharpen.", guidance=GuidanceOptions.editing(num_timesteps=2)).size == (48, 48)
    overridden = UniMedVL(load_checkpoint(checkpoint_copy), image_config=sizes)
    assert overridden.vqa_vit_rule.max_size == 56 and overridden.gen_vit_rule.max_size == 42
