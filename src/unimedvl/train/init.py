"""Model construction for training: from a preset (random init), a released checkpoint, or components.

Components are read through the checkpoint package's key maps (strict, one report each): a
Hugging Face Qwen2 folder fills the understanding expert and is copied into the generation expert
(`*_moe_gen`), as BAGEL's `init_moe`; a Hugging Face SigLIP folder (conv patch embedding converted
to linear form, layers past the penultimate one dropped); a FLUX `ae.safetensors`. Unused heads
are initialised as the reference does (`llm2vae` zero; the sin-cos tables are fixed buffers).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from unimedvl.checkpoint import keymaps
from unimedvl.checkpoint.folder import load_checkpoint, load_component, load_vae
from unimedvl.config import UnifiedConfig
from unimedvl.errors import CheckpointError, ConfigError
from unimedvl.model.builder import build_model
from unimedvl.model.layers import Embedding, Linear, RMSNorm
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder
from unimedvl.text.tokenizer import TextTokenizer
from unimedvl.train.config import ModelInit

log = logging.getLogger(__name__)


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
            nn.init.normal_(model.vit_model.vision_model.embeddings.position_embedding.weight, std=std, generator=generator)


def build_for_training(spec: ModelInit, seed: int) -> tuple[UnifiedConfig, UniMedVLModel, AutoEncoder, TextTokenizer]:
    """(config, trainable fp32 model in train mode, VAE in eval mode, tokenizer) on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    if spec.checkpoint:
        loaded = load_checkpoint(spec.checkpoint, dtype="float32", device="cpu")
        if loaded.vae is None:
            raise CheckpointError(f"{spec.checkpoint} has no ae.safetensors; training needs the VAE")
        tokenizer = TextTokenizer.from_dir(spec.tokenizer or spec.checkpoint)
        return loaded.config, loaded.model.requires_grad_(True).train(), loaded.vae, tokenizer
    if spec.config_dir:
        config = UnifiedConfig.from_checkpoint_dir(spec.config_dir)
    elif spec.preset:
        config = UnifiedConfig.preset(spec.preset)
    else:
        raise ConfigError("model: give a checkpoint, a config_dir or a preset")
    if not spec.tokenizer:
        raise ConfigError("model.tokenizer is required when not starting from a checkpoint")
    tokenizer = TextTokenizer.from_dir(spec.tokenizer)
    model = build_model(config, device="cpu")
    init_weights(model, generator)
    for path, key_map in ((spec.llm, keymaps.QWEN2), (spec.vit, keymaps.SIGLIP)):
        if path:
            log.info("%s", load_component(model, path, key_map).format())
    if spec.vae:
        vae, report = load_vae(Path(spec.vae), config.vae, dtype=torch.float32, device=torch.device("cpu"))
        log.info("%s", report.format())
    else:
        vae = AutoEncoder(config.vae)
        init_weights(vae, generator)
    return config, model.train(), vae.eval(), tokenizer
