"""Limits refused with one clear error before any large allocation (issue 13, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.cli import main
from unimedvl.errors import InputError
from unimedvl.inference.engine import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, TextOptions, UniMedVL


@pytest.mark.parametrize("options, message", [
    ({"max_new_tokens": 10**9}, "max_new_tokens must be an integer in"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer in"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer in"),
    ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number"),
    ({"top_p": float("inf")}, "top_p must be a finite number"),
])
def test_decoding_options_are_bounded_and_finite(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TextOptions(**options)
    assert TextOptions(max_new_tokens=MAX_NEW_TOKENS).max_new_tokens == MAX_NEW_TOKENS


def test_a_huge_prompt_is_refused_before_tokenizing(engine, cxr_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=f"at most {MAX_PROMPT_CHARS:,}"):
        engine.ask([cxr_path], "pneumonia? " * 8_000)
    with pytest.raises(InputError, match="characters"):
        engine.generate("A chest X-ray. " * 10_000, height=32, width=32)


def test_the_context_cannot_outgrow_the_model(checkpoint_copy: Path, cxr_path: Path) -> None:
    config = json.loads((checkpoint_copy / "llm_config.json").read_text())
    (checkpoint_copy / "llm_config.json").write_text(json.dumps({**config, "max_position_embeddings": 96}))
    with pytest.raises(InputError, match="the image needs .* more tokens after 0"):  # reference sizes: ~4,900 patches
        UniMedVL(load_checkpoint(checkpoint_copy)).ask([cxr_path], "Is there pneumonia?")
    (checkpoint_copy / "image_config.json").write_text(json.dumps(
        {"vae_max": 64, "vae_min": 32, "vit_max": 56, "vit_min": 28, "default_size": 32}))
    engine = UniMedVL(load_checkpoint(checkpoint_copy))
    with pytest.raises(InputError, match="at most 96 in one context"):
        engine.ask([cxr_path], "Is there pneumonia? " * 30)
    with pytest.raises(InputError, match="max_new_tokens=80 needs 81 more tokens"):
        engine.ask([cxr_path], "Is there pneumonia?", max_new_tokens=80)
    assert engine.ask([cxr_path], "Is there pneumonia?", max_new_tokens=4).token_ids


def test_the_cli_says_so_in_one_line(capsys, cxr_path: Path) -> None:  # noqa: ANN001
    assert main(["ask", str(cxr_path), "-q", "hi", "--max-new-tokens", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: max_new_tokens must be an integer in") and err.count("\n") == 1


@pytest.mark.parametrize("override, message", [
    ("optim.ema_decay=2", "optim.ema_decay must be >= 0.0 and < 1.0"),
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("optim.lr=-1e-3", "optim.lr must be > 0.0"),
    ("data.packs_per_step=0", "data.packs_per_step must be >= 1"),
    ("total_steps=0", "total_steps must be >= 1"),
    ("save_every=0", "save_every must be >= 1"),
    ("seed=18446744073709551616", "seed must be"),
    ("timestep_shift=inf", "timestep_shift must be a finite number"),
    ("data.text_dropout=1.5", "data.text_dropout must be"),
    ("total_steps.x=1", "'total_steps' is a value, not a section"),
])
def test_bad_recipe_values_are_named(override: str, message: str) -> None:
    """Issue 13, items 9 and 10: these were accepted, or ended in a traceback."""
    from unimedvl.errors import ConfigError
    from unimedvl.train.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-stage1-foundation.yaml"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig.from_yaml(recipe, [override])


@pytest.mark.parametrize("field, value, message", [
    ("rope_theta", float("nan"), "rope_theta must be a positive finite number"),
    ("rms_norm_eps", float("inf"), "rms_norm_eps must be a positive finite number"),
    ("num_hidden_layers", 1_000_000, "exceeds the limit 256"),
    ("hidden_size", True, "hidden_size must be an integer, got True"),
])
def test_model_configs_must_be_finite_and_sane(checkpoint_copy: Path, field: str, value: object, message: str) -> None:
    from unimedvl.errors import ConfigError

    config = json.loads((checkpoint_copy / "llm_config.json").read_text())
    (checkpoint_copy / "llm_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ConfigError, match=message):
        load_checkpoint(checkpoint_copy)


def test_seeds_beyond_64_bits_are_refused(engine, cxr_path: Path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="seed must be an integer in"):
        engine.generate("A chest X-ray.", seed=2**64 + 1, height=32, width=32)
    assert main(["generate", "A chest X-ray.", "--seed", str(2**64)]) == 2
    assert "seed must be an integer in" in capsys.readouterr().err


def test_non_finite_weights_are_named_in_the_load_report(checkpoint_copy: Path) -> None:
    """Issue 13, item 9: NaN / inf weights loaded and answered "!!!!"."""
    from safetensors.torch import load_file, save_file

    from unimedvl.errors import CheckpointError

    weights = load_file(str(checkpoint_copy / "ema.safetensors"))
    key = sorted(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)[0]
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = float("nan")
    save_file(weights, str(checkpoint_copy / "ema.safetensors"))
    with pytest.raises(CheckpointError, match=f"1 holding NaN or infinity: {key.replace('.', '[.]')}"):
        load_checkpoint(checkpoint_copy)
    loaded = load_checkpoint(checkpoint_copy, strict=False)  # a non-strict load says so and goes on
    assert loaded.reports[0].non_finite == [key] and not loaded.reports[0].ok
