"""Strict loading: one readable report, safetensors only, known extras, memory-mapped fill."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unimedvl.checkpoint.folder import load_checkpoint
from unimedvl.errors import CheckpointError, ConfigError
from unimedvl.model.connectors import sincos_2d_table


def _rewrite(folder: Path, edit) -> None:  # noqa: ANN001
    weights = load_file(str(folder / "ema.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "ema.safetensors"))


def test_loads_strictly_and_reports(checkpoint_copy: Path) -> None:
    loaded = load_checkpoint(checkpoint_copy)
    assert [r.ok for r in loaded.reports] == [True, True]
    assert loaded.reports[0].loaded == 111 and loaded.reports[1].loaded == 172
    assert not any(p.is_meta for p in loaded.model.parameters())
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_missing_unexpected_and_misshaped_keys_in_one_report(checkpoint_copy: Path) -> None:
    def edit(w: dict) -> None:
        del w["llm2vae.bias"]
        w["language_model.extra.weight"] = torch.zeros(2)
        w["connector.fc1.weight"] = torch.zeros(3, 3)

    _rewrite(checkpoint_copy, edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(checkpoint_copy)
    message = str(info.value)
    assert "1 missing: llm2vae.bias" in message
    assert "1 unexpected: language_model.extra.weight" in message
    assert "connector.fc1.weight (model [64, 64], file [3, 3])" in message
    assert "\n" not in message


def test_non_strict_load_warns_and_fills(checkpoint_copy: Path, caplog) -> None:
    _rewrite(checkpoint_copy, lambda w: w.pop("llm2vae.bias"))
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(checkpoint_copy, strict=False)
    assert "llm2vae.bias" in caplog.text
    assert torch.equal(loaded.model.llm2vae.bias, torch.zeros(64))


def test_known_extras_are_accepted_with_a_warning(checkpoint_copy: Path, caplog) -> None:
    _rewrite(checkpoint_copy, lambda w: w.update({"vae_model.encoder.conv_in.weight": torch.zeros(1),
                                                  "vae_batch_norm.running_mean": torch.zeros(16)}))
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(checkpoint_copy)
    assert loaded.reports[0].ignored_extras == ["vae_batch_norm.running_mean", "vae_model.encoder.conv_in.weight"]
    assert "known extra" in caplog.text


def test_sincos_tables_equal_the_stored_bf16_tables_and_are_recomputed_when_absent(checkpoint_copy: Path) -> None:
    stored = load_file(str(checkpoint_copy / "ema.safetensors"))
    assert torch.equal(sincos_2d_table(64, 64).bfloat16(), stored["latent_pos_embed.pos_embed"])
    assert torch.equal(sincos_2d_table(64, 70).bfloat16(), stored["vit_pos_embed.pos_embed"])
    _rewrite(checkpoint_copy, lambda w: w.pop("latent_pos_embed.pos_embed"))
    loaded = load_checkpoint(checkpoint_copy)
    assert loaded.reports[0].recomputed == ["latent_pos_embed.pos_embed"]
    assert torch.equal(loaded.model.latent_pos_embed.pos_embed, sincos_2d_table(64, 64))


def test_pickle_checkpoints_are_refused(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "ema.safetensors").unlink()
    (checkpoint_copy / "ema.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickle.*not loaded"):
        load_checkpoint(checkpoint_copy)


def test_corrupt_safetensors_gives_a_clear_error(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "ema.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="ema.safetensors is not a readable safetensors file"):
        load_checkpoint(checkpoint_copy)


def test_missing_folder_and_files(tmp_path: Path, checkpoint_copy: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    (checkpoint_copy / "tokenizer.json").unlink()
    (checkpoint_copy / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_checkpoint(checkpoint_copy)


def test_model_safetensors_and_sharded_index(checkpoint_copy: Path) -> None:
    weights = load_file(str(checkpoint_copy / "ema.safetensors"))
    keys = sorted(weights)
    save_file({k: weights[k] for k in keys[:50]}, str(checkpoint_copy / "model-00001-of-00002.safetensors"))
    save_file({k: weights[k] for k in keys[50:]}, str(checkpoint_copy / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {k: f"model-0000{1 if i < 50 else 2}-of-00002.safetensors" for i, k in enumerate(keys)}}
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = load_checkpoint(checkpoint_copy, weights="model")
    single = load_checkpoint(checkpoint_copy, weights="ema")
    for (name, a), (_, b) in zip(sharded.model.state_dict().items(), single.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_vae_with_ddp_prefix_loads(checkpoint_copy: Path) -> None:
    ae = load_file(str(checkpoint_copy / "ae.safetensors"))
    save_file({f"module.{k}": v for k, v in ae.items()}, str(checkpoint_copy / "ae.safetensors"))
    loaded = load_checkpoint(checkpoint_copy)
    assert loaded.reports[1].ok and loaded.reports[1].loaded == len(ae)


def test_dtype_rules(checkpoint_copy: Path) -> None:
    with pytest.raises(ConfigError, match="float16 weights are supported on GPU only"):
        load_checkpoint(checkpoint_copy, dtype="float16", device="cpu")
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_checkpoint(checkpoint_copy, dtype="int3")
    loaded = load_checkpoint(checkpoint_copy, dtype="bfloat16")
    assert loaded.model.vit_model.vision_model.post_layernorm.weight.dtype == torch.bfloat16
    assert next(loaded.vae.parameters()).dtype == torch.float32  # the VAE computes in fp32 on CPU


def test_checkpoint_without_vae_cannot_generate(checkpoint_copy: Path) -> None:
    from unimedvl.errors import InputError
    from unimedvl.inference.engine import UniMedVL

    (checkpoint_copy / "ae.safetensors").unlink()
    model = UniMedVL.from_pretrained(checkpoint_copy)
    assert model.ask([], "Hello?", max_new_tokens=2).token_ids  # understanding still works
    with pytest.raises(InputError, match="no ae.safetensors"):
        model.generate("A chest X-ray.", height=32, width=32)


def test_integer_weights_for_a_float_parameter_are_named(checkpoint_copy: Path) -> None:
    """Issue 13, item 10: an int32 tensor raised torch's "Only Tensors of floating point ... can require gradients"."""

    tensors = load_file(checkpoint_copy / "ema.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].to(torch.int32)
    save_file(tensors, checkpoint_copy / "ema.safetensors")
    with pytest.raises(CheckpointError, match=r"not floating point: .*\(I32\)"):
        load_checkpoint(checkpoint_copy)


@pytest.mark.parametrize(("weight_map", "message"), [
    (["ema-00001.safetensors"], "weight_map must map tensor names"),
    ({"a": 5}, "weight_map must map tensor names"),
    ({"a": "../../elsewhere/ema.safetensors"}, "not .safetensors files in the folder"),
    ({"a": "ema-00001.bin"}, "not .safetensors files in the folder"),
])
def test_a_malformed_shard_index_is_named(checkpoint_copy: Path, weight_map, message: str) -> None:
    (checkpoint_copy / "ema.safetensors").rename(checkpoint_copy / "ema-00001.safetensors")
    (checkpoint_copy / "ema.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(checkpoint_copy)
