from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from unimedvl.config import LLMConfig, UnifiedConfig, VAEConfig, ViTConfig
from unimedvl.errors import ConfigError


def test_reads_released_configs_with_reference_overrides(fixture_dir: Path) -> None:
    cfg = UnifiedConfig.from_checkpoint_dir(fixture_dir)
    assert cfg.vit.num_hidden_layers == 2  # JSON says 3: the loader drops the last layer
    assert cfg.llm.qk_norm and not cfg.llm.tie_word_embeddings and cfg.llm.layer_kind == "mot"
    assert cfg.vae.ch == 32 and cfg.vae.ch_mult == (1, 1, 1, 1)  # from the fixture-only vae_config.json
    assert (cfg.max_latent_size, cfg.vit_max_num_patch_per_side, cfg.latent_patch_size) == (64, 70, 2)
    assert cfg == UnifiedConfig.tiny()
    assert cfg.latent_downsample == 16 and cfg.patch_latent_dim == 64


def test_full_preset_matches_the_released_model() -> None:
    cfg = UnifiedConfig.full()
    assert cfg.llm.head_dim == 128 and cfg.llm.num_key_value_heads == 4
    assert cfg.vit.num_hidden_layers == 26 and cfg.vit.patch_dim == 588 and cfg.vit.num_positions == 4900
    assert cfg.vae == VAEConfig()


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = UnifiedConfig.tiny()
    cfg.save_to_dir(tmp_path)
    assert json.loads((tmp_path / "vit_config.json").read_text())["num_hidden_layers"] == 3
    assert UnifiedConfig.from_checkpoint_dir(tmp_path) == cfg


def test_unknown_key_is_named(checkpoint_copy: Path) -> None:
    path = checkpoint_copy / "llm_config.json"
    data = json.loads(path.read_text())
    data["hiden_size"] = 64
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown key.*hiden_size"):
        UnifiedConfig.from_checkpoint_dir(checkpoint_copy)


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match="hidden_size must be divisible"):
        LLMConfig(hidden_size=65, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ConfigError, match="num_attention_heads must be divisible"):
        LLMConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="ViTConfig.patch_size"):
        ViTConfig(patch_size=0)
    with pytest.raises(ConfigError, match="downsample"):
        VAEConfig(ch_mult=(1, 1), downsample=8)
    with pytest.raises(ConfigError, match="unknown config preset"):
        UnifiedConfig.preset("huge")


def test_configs_are_frozen() -> None:
    cfg = UnifiedConfig.tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_latent_size = 32  # type: ignore[misc]
    assert dataclasses.replace(cfg, max_latent_size=32).max_latent_size == 32


def test_missing_or_malformed_config_file(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "vit_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="vit_config.json is not valid JSON"):
        UnifiedConfig.from_checkpoint_dir(checkpoint_copy)
    (checkpoint_copy / "vit_config.json").unlink()
    with pytest.raises(ConfigError, match="config file not found"):
        UnifiedConfig.from_checkpoint_dir(checkpoint_copy)


WRONG_TYPES = [("vit_config.json", "num_hidden_layers", "x"), ("vit_config.json", "num_hidden_layers", None),
               ("vit_config.json", "intermediate_size", 1.5), ("vit_config.json", "patch_size", 14.0),
               ("vit_config.json", "image_size", [980]), ("vit_config.json", "hidden_act", [1]),
               ("llm_config.json", "num_hidden_layers", 1.5), ("llm_config.json", "intermediate_size", 1.5),
               ("llm_config.json", "max_position_embeddings", "x"), ("llm_config.json", "max_position_embeddings", -1),
               ("llm_config.json", "hidden_size", True), ("llm_config.json", "rope_theta", "1e6"),
               ("vae_config.json", "params", [1]), ("vae_config.json", "params", None),
               ("vae_config.json", "ch_mult", [1, "x", 1, 1]), ("vae_config.json", "ch_mult", []),
               ("vae_config.json", "scale_factor", "x"), ("vae_config.json", "z_channels", 4.5)]


@pytest.mark.parametrize(("name", "key", "value"), WRONG_TYPES)
def test_a_wrong_type_in_a_config_file_is_named_not_a_traceback(checkpoint_copy: Path, name: str, key: str,
                                                               value) -> None:
    """Issue 13, item 10: these raised TypeError / ValueError from int() or torch.empty()."""
    from unimedvl.checkpoint.folder import load_checkpoint

    path = checkpoint_copy / name
    data = json.loads(path.read_text())
    target = data["params"] if name == "vae_config.json" and key != "params" else data
    target[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=key.split("[")[0] if key != "params" else "params"):
        load_checkpoint(checkpoint_copy)
