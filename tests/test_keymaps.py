"""Every weights format lands in the model through its declarative key map, strictly, with one report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unimedvl.assets import REFERENCE_TINY
from unimedvl.checkpoint import keymaps
from unimedvl.checkpoint.folder import load_checkpoint, load_component, save_checkpoint
from unimedvl.config import ImageConfig, UnifiedConfig
from unimedvl.errors import CheckpointError
from unimedvl.model.builder import build_model
from unimedvl.text.tokenizer import TextTokenizer

EMA = {k: v.float() for k, v in load_file(str(REFERENCE_TINY / "ema.safetensors")).items()}


def _fresh_model():  # noqa: ANN202
    model = build_model(UnifiedConfig.from_checkpoint_dir(REFERENCE_TINY), device="cpu")
    for p in model.parameters():
        torch.nn.init.constant_(p, 7.0)
    return model


def _qwen2_file(folder: Path, edit=None) -> Path:  # noqa: ANN001
    """The fixture's understanding expert in the Hugging Face Qwen2.5 layout (no QK-norm)."""
    llm = {k.removeprefix("language_model."): v for k, v in EMA.items()
           if k.startswith("language_model.") and "_moe_gen" not in k and "_norm." not in k}
    if edit:
        edit(llm)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(llm, str(folder / "model.safetensors"))
    return folder


def test_qwen2_fills_both_experts_and_keeps_the_missing_qk_norm(tmp_path: Path) -> None:
    model = _fresh_model()
    report = load_component(model, _qwen2_file(tmp_path / "qwen2"), keymaps.QWEN2)
    assert report.ok and not report.missing
    up = EMA["language_model.model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(model.get_parameter("language_model.model.layers.1.mlp.up_proj.weight"), up)
    assert torch.equal(model.get_parameter("language_model.model.layers.1.mlp_moe_gen.up_proj.weight"), up)
    assert torch.equal(model.get_parameter("language_model.model.norm_moe_gen.weight"),
                       EMA["language_model.model.norm.weight"])
    # Qwen2.5 has no QK-norm: those weights keep their initial value and the report says so.
    assert "language_model.model.layers.0.self_attn.q_norm_moe_gen.weight" in report.kept and len(report.kept) == 8
    assert bool((model.get_parameter("language_model.model.layers.0.self_attn.q_norm.weight") == 7.0).all())
    assert bool((model.vit_model.vision_model.post_layernorm.weight == 7.0).all())  # outside the scope: untouched
    assert "kept as initialised" in report.format()


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.update({"model.layers.0.mlp.extra.weight": torch.zeros(2)}), "1 unexpected: language_model.model.layers.0.mlp.extra"),
    (lambda w: w.pop("model.layers.1.mlp.up_proj.weight"), "missing: language_model.model.layers.1.mlp.up_proj.weight, "
                                                            "language_model.model.layers.1.mlp_moe_gen.up_proj.weight"),
    (lambda w: w.update({"lm_head.weight": torch.zeros(3, 3)}), "language_model.lm_head.weight (model [320, 64], file [3, 3])"),
])
def test_qwen2_problems_are_named_in_one_error(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    with pytest.raises(CheckpointError, match="checkpoint does not match the model") as info:
        load_component(_fresh_model(), _qwen2_file(tmp_path / "q", edit), keymaps.QWEN2)
    assert message in str(info.value)


def test_siglip_conv_patch_embedding_extra_layer_head_and_text_tower(tmp_path: Path) -> None:
    vit = {k.removeprefix("vit_model."): v for k, v in EMA.items() if k.startswith("vit_model.")}
    linear = vit["vision_model.embeddings.patch_embedding.weight"]
    vit["vision_model.embeddings.patch_embedding.weight"] = linear.reshape(64, 14, 14, 3).permute(0, 3, 1, 2).contiguous()
    for key in [k for k in vit if ".encoder.layers.1." in k]:  # the last layer, which the model does not use
        vit[key.replace(".layers.1.", ".layers.2.")] = torch.zeros_like(vit[key])
    vit["vision_model.head.probe"] = torch.zeros(1, 1, 64)
    vit["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 64)
    vit["logit_scale"] = torch.zeros(1)
    (tmp_path / "siglip").mkdir()
    save_file(vit, str(tmp_path / "siglip" / "model.safetensors"))
    model = _fresh_model()
    report = load_component(model, tmp_path / "siglip", keymaps.SIGLIP)
    assert report.ok and report.loaded == len([k for k in EMA if k.startswith("vit_model.")])
    assert torch.equal(model.get_parameter("vit_model.vision_model.embeddings.patch_embedding.weight"), linear)
    assert all(".layers.2." in k for k in report.dropped) and len(report.dropped) > 0
    assert sorted(report.ignored_extras) == ["logit_scale", "text_model.embeddings.token_embedding.weight",
                                             "vit_model.vision_model.head.probe"]


def test_pickle_components_are_refused(tmp_path: Path) -> None:
    (tmp_path / "qwen2.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="only safetensors weights are loaded"):
        load_component(_fresh_model(), tmp_path / "qwen2.bin", keymaps.QWEN2)


def test_save_then_load_round_trips_the_released_layout(tmp_path: Path) -> None:
    loaded = load_checkpoint(REFERENCE_TINY)
    sizes = ImageConfig.trained(vit_max=56, vit_min=28, vae_max=64, vae_min=32)
    save_checkpoint(tmp_path / "out", config=loaded.config, weights=loaded.model.state_dict(),
                    vae_weights=loaded.vae.state_dict(), tokenizer=TextTokenizer.from_dir(REFERENCE_TINY),
                    image_config=sizes)
    again = load_checkpoint(tmp_path / "out")
    assert again.config == loaded.config and again.image_config == sizes
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name  # the fixture is stored in bf16, so the round trip is exact
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["ae.safetensors", "ema.safetensors", "image_config.json", "llm_config.json", "tokenizer.json",
         "vae_config.json", "vit_config.json"])
