"""Model construction for training: from a preset (random init), a released checkpoint, or components.

Components: a Hugging Face Qwen2 safetensors folder (`model.*`, `lm_head.*` keys) fills the
understanding expert and is copied into the generation expert (`*_moe_gen`), as BAGEL's `init_moe`;
a Hugging Face SigLIP folder (`vision_model.*`, conv patch embedding converted to linear form, the
last layer dropped); a FLUX `ae.safetensors`. Unused heads are initialised as the reference does
(`llm2vae` zero, sin-cos tables).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from unimedvl.config import UnifiedConfig
from unimedvl.errors import CheckpointError, ConfigError
from unimedvl.loading import load_checkpoint
from unimedvl.model.layers import Embedding, Linear, RMSNorm
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder
from unimedvl.tokenizer import TextTokenizer
from unimedvl.train.config import ModelInit


def init_weights(model: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (Linear, nn.Linear, Embedding, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, (RMSNorm, nn.LayerNorm, nn.GroupNorm)):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        if isinstance(model, UniMedVLModel):
            model.llm2vae.weight.zero_()
            model.llm2vae.bias.zero_()
            model.latent_pos_embed.reset_table()
            model.vit_pos_embed.reset_table()
            nn.init.normal_(model.vit_model.vision_model.embeddings.position_embedding.weight, std=std, generator=generator)


def _read(folder: Path, pattern: str = "*.safetensors") -> dict[str, torch.Tensor]:
    files = sorted(folder.glob(pattern)) if folder.is_dir() else [folder]
    if not files or any(f.suffix != ".safetensors" for f in files):
        raise CheckpointError(f"{folder}: expected .safetensors weights")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


def load_components(model: UniMedVLModel, llm: str | None, vit: str | None) -> list[str]:
    """Fill the LLM (both experts) and the ViT from Hugging Face layouts; returns the keys it set."""
    target = model.state_dict()
    updates: dict[str, torch.Tensor] = {}
    if llm:
        for key, value in _read(Path(llm)).items():
            name = f"language_model.{key}"
            if name not in target:
                raise CheckpointError(f"unexpected Qwen2 key {key}")
            updates[name] = value
            stem, dot, leaf = name.rpartition(".")
            for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "self_attn.q_norm", "self_attn.k_norm", "mlp", "input_layernorm", "post_attention_layernorm"):
                if f".{part}." in f"{stem}.":
                    twin = name.replace(f".{part}.", f".{part}_moe_gen.", 1)
                    if twin in target:
                        updates[twin] = value.clone()  # generation expert starts as the understanding expert
            if name == "language_model.model.norm.weight":
                updates["language_model.model.norm_moe_gen.weight"] = value.clone()
    if vit:
        for key, value in _read(Path(vit)).items():
            name = f"vit_model.{key}"
            if key.endswith("embeddings.patch_embedding.weight") and value.ndim == 4:
                value = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1)  # conv -> linear, (dy, dx, rgb)
            if name not in target:
                if ".encoder.layers." in name:
                    continue  # the layer(s) past the penultimate one are not used
                raise CheckpointError(f"unexpected SigLIP key {key}")
            updates[name] = value
    for name, value in updates.items():
        if tuple(value.shape) != tuple(target[name].shape):
            raise CheckpointError(f"{name}: shape {list(value.shape)} does not match the model's {list(target[name].shape)}")
    model.load_state_dict(updates, strict=False)
    return sorted(updates)


def build_for_training(spec: ModelInit, seed: int) -> tuple[UnifiedConfig, UniMedVLModel, AutoEncoder, TextTokenizer]:
    generator = torch.Generator().manual_seed(seed)
    if spec.checkpoint:
        loaded = load_checkpoint(spec.checkpoint, dtype="float32", device="cpu")
        model, vae = loaded.model, loaded.vae
        if vae is None:
            raise CheckpointError(f"{spec.checkpoint} has no ae.safetensors; training needs the VAE")
        model.requires_grad_(True)
        for table in (model.latent_pos_embed.pos_embed, model.vit_pos_embed.pos_embed):
            table.requires_grad_(False)
        tokenizer = TextTokenizer.from_dir(spec.tokenizer or spec.checkpoint)
        return loaded.config, model.train(), vae, tokenizer
    if spec.config_dir:
        config = UnifiedConfig.from_checkpoint_dir(spec.config_dir)
    elif spec.preset:
        config = UnifiedConfig.preset(spec.preset)
    else:
        raise ConfigError("model: give a checkpoint, a config_dir or a preset")
    if not spec.tokenizer:
        raise ConfigError("model.tokenizer is required when not starting from a checkpoint")
    tokenizer = TextTokenizer.from_dir(spec.tokenizer)
    model = UniMedVLModel(config)
    init_weights(model, generator)
    load_components(model, spec.llm, spec.vit)
    vae = AutoEncoder(config.vae)
    if spec.vae:
        state = _read(Path(spec.vae))
        vae.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    else:
        init_weights(vae, generator)
    for table in (model.latent_pos_embed.pos_embed, model.vit_pos_embed.pos_embed):
        table.requires_grad_(False)
    return config, model.train(), vae.eval(), tokenizer
