"""Starting points: separate Hugging Face Qwen2 / SigLIP weights and a FLUX VAE; activation checkpointing."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from train_helpers import write_recipe

from unimedvl.assets import REFERENCE_TINY
from unimedvl.train.config import ModelInit, TrainConfig
from unimedvl.train.init import build_for_training
from unimedvl.train.objective import pack_losses
from unimedvl.train.trainer import Trainer


def _hf_components(folder: Path) -> tuple[Path, Path, Path]:
    """Write the tiny fixture's understanding weights as HF Qwen2 / SigLIP files (conv patch embedding, one
    extra encoder layer as a SigLIP checkpoint has) and its VAE as a DDP-prefixed ae.safetensors."""
    ema = {k: v.float() for k, v in load_file(str(REFERENCE_TINY / "ema.safetensors")).items()}
    llm = {k.removeprefix("language_model."): v for k, v in ema.items()
           if k.startswith("language_model.") and "_moe_gen" not in k}
    vit = {k.removeprefix("vit_model."): v for k, v in ema.items() if k.startswith("vit_model.")}
    linear = vit["vision_model.embeddings.patch_embedding.weight"]
    vit["vision_model.embeddings.patch_embedding.weight"] = linear.reshape(64, 14, 14, 3).permute(0, 3, 1, 2).contiguous()
    for key in [k for k in vit if ".encoder.layers.1." in k]:
        vit[key.replace(".layers.1.", ".layers.2.")] = torch.zeros_like(vit[key])
    paths = (folder / "qwen2", folder / "siglip", folder / "ae.safetensors")
    for path, tensors in zip(paths[:2], (llm, vit)):
        path.mkdir(parents=True)
        save_file(tensors, str(path / "model.safetensors"))
    save_file({f"module.{k}": v for k, v in load_file(str(REFERENCE_TINY / "ae.safetensors")).items()}, str(paths[2]))
    return paths


def test_components_fill_both_experts(tmp_path: Path) -> None:
    llm, vit, vae = _hf_components(tmp_path)
    spec = ModelInit(preset=None, config_dir=str(REFERENCE_TINY), llm=str(llm), vit=str(vit), vae=str(vae),
                     tokenizer=str(REFERENCE_TINY))
    _, model, autoencoder, _ = build_for_training(spec, seed=0)
    ema = load_file(str(REFERENCE_TINY / "ema.safetensors"))
    for name in ("language_model.model.layers.1.mlp.up_proj.weight", "language_model.model.norm.weight",
                 "vit_model.vision_model.embeddings.patch_embedding.weight"):
        assert torch.equal(model.get_parameter(name), ema[name].float()), name
    assert torch.equal(model.get_parameter("language_model.model.layers.1.mlp_moe_gen.up_proj.weight"),
                       ema["language_model.model.layers.1.mlp.up_proj.weight"].float())
    assert torch.equal(model.get_parameter("language_model.model.norm_moe_gen.weight"),
                       ema["language_model.model.norm.weight"].float())
    assert torch.count_nonzero(model.llm2vae.weight) == 0  # zero-initialised, as the reference
    assert torch.equal(autoencoder.decoder.conv_out.weight, load_file(str(REFERENCE_TINY / "ae.safetensors"))["decoder.conv_out.weight"])


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tmp_path: Path, train_corpus: Path) -> None:
    recipe = write_recipe(tmp_path, train_corpus)
    trainer = Trainer(TrainConfig.from_yaml(recipe))
    pack = trainer.packs.make(0, 0)
    results = []
    for checkpointing in (False, True):
        trainer.model.zero_grad(set_to_none=True)
        sums = pack_losses(trainer.model, trainer.vae, pack, timestep_shift=1.0,
                           checkpoint_layers=checkpointing)
        (sums.ce_sum + sums.mse_sum).backward()
        grad = trainer.model.get_parameter("language_model.model.layers.0.self_attn.q_proj.weight").grad.clone()
        results.append((sums.ce_sum.item(), sums.mse_sum.item(), grad))
    assert results[0][:2] == results[1][:2]
    assert torch.allclose(results[0][2], results[1][2], atol=1e-6)
    assert pack.num_ce_tokens > 0 and pack.num_tokens >= 160
