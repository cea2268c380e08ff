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


def test_trained_generation_sizes_round_trip_and_v1_files_stay_as_they_were() -> None:
    sizes = DataConfig(vit_max=56, vit_min=56, vae_max=128, vae_min=64, vae_sizes=[128, 64]).image_config
    assert sizes.generation_sizes == (64, 128)
    assert sizes.to_json_dict()["generation_sizes"] == [64, 128]
    assert ImageConfig.from_json_dict(sizes.to_json_dict()) == sizes
    assert "generation_sizes" not in DataConfig(vae_max=64, vae_min=64).image_config.to_json_dict()
    assert sizes.untrained_sides(128, 64) == [] and sizes.untrained_sides(256, 96) == [96, 256]
    assert ImageConfig.reference().untrained_sides(1000, 1000) == []  # not recorded: nothing is flagged
    with pytest.raises(ConfigError, match="generation_sizes"):
        ImageConfig.from_json_dict({"vae_max": 64, "vae_min": 64, "vit_max": 56, "vit_min": 56, "default_size": 64,
                                    "generation_sizes": ["big"]})


def test_untrained_sizes_warn_once_and_edits_go_to_the_nearest_trained_size(checkpoint_copy: Path, mri_path: Path,
                                                                            recwarn) -> None:  # noqa: ANN001
    (checkpoint_copy / "image_config.json").write_text(json.dumps(
        {"vae_max": 64, "vae_min": 16, "vit_max": 56, "vit_min": 28, "default_size": 32, "generation_sizes": [32, 64]}))
    engine = UniMedVL(load_checkpoint(checkpoint_copy))
    fast = GuidanceOptions.text_to_image(num_timesteps=2)
    engine.generate("A chest X-ray.", guidance=fast, height=32, width=32)
    assert not [w for w in recwarn if "trained to generate" in str(w.message)]
    for _ in range(2):
        engine.generate("A chest X-ray.", guidance=fast, height=48, width=48)
    messages = [str(w.message) for w in recwarn if "trained to generate" in str(w.message)]
    assert messages == ["48x48: this checkpoint was trained to generate at sides 32, 64 px only; "
                        "other sizes may give poor images"]
    assert engine.edit_size(1024, 1024) == (64, 64)  # the VAE rule's 64, a trained side
    assert engine.edit_size(48, 48) == (64, 64)  # 48 px by the rule: between 32 and 64, a tie goes up
    assert engine.edit_size(20, 20) == (32, 32)  # 16 px by the rule -> the nearest trained side, 32
    assert engine.edit_size(96, 48) == (32, 64)  # 64 x 32 by the rule: trained, aspect kept
    edited = engine.edit(mri_path, "Sharpen.", guidance=GuidanceOptions.editing(num_timesteps=2))
    assert max(edited.size) in (32, 64)
