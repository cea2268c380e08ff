"""Where each kind of weights file lands in the model: one declarative :class:`KeyMap` per format.

    released   ema.safetensors / model.safetensors   the unified model, keys as released (identity)
    vae        ae.safetensors                        the FLUX autoencoder (a DDP `module.` prefix is stripped)
    qwen2      Hugging Face Qwen2 / Qwen2.5 folder   `language_model.*`, both experts
    siglip     Hugging Face SigLIP folder            `vit_model.*` (conv patch embedding -> linear)

Round trips and every rule are tested in `tests/test_keymaps.py`.
"""

from __future__ import annotations

import torch

from unimedvl.checkpoint.weights import KeyMap

TABLES = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")

RELEASED = KeyMap(
    name="model weights",
    ignored=(("vae_model.", "VAE weights saved inside the model; the VAE is read from ae.safetensors"),
             ("vae_batch_norm.", "latent BatchNorm of UniMedVL's e2e-VAE training, unused at inference")),
    derivable=TABLES,
)

VAE = KeyMap(name="ae.safetensors", strip_wrapper=True)

# Every per-expert module of a decoder layer, and the final norm: the generation expert
# (`*_moe_gen`) starts as a copy of the understanding expert (BAGEL's `init_moe`).
_EXPERT_PARTS = r"self_attn\.(?:q|k|v|o)_proj|self_attn\.(?:q|k)_norm|mlp|input_layernorm|post_attention_layernorm"
QWEN2 = KeyMap(
    name="Qwen2 (Hugging Face layout)",
    renames=(("", "language_model."),),
    scope="language_model.",
    copies=((rf"^(language_model\.model\.layers\.\d+\.)({_EXPERT_PARTS})\.", r"\1\2_moe_gen."),
            (r"^language_model\.model\.norm\.", "language_model.model.norm_moe_gen.")),
    # Qwen2 / Qwen2.5 have no QK-norm; the MoT model adds it, initialised to one (as BAGEL does).
    keep_if_absent=(r"\.self_attn\.(?:q|k)_norm(?:_moe_gen)?\.weight$",),
)


def _conv_patch_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """SigLIP's Conv2d patch embedding `[D, 3, p, p]` -> our Linear `[D, p*p*3]`, features (dy, dx, rgb)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1) if weight.ndim == 4 else weight


SIGLIP = KeyMap(
    name="SigLIP (Hugging Face layout)",
    renames=(("vision_model.", "vit_model.vision_model."),),
    scope="vit_model.",
    transforms=((r"embeddings\.patch_embedding\.weight$", _conv_patch_to_linear),),
    ignored=(("text_model.", "SigLIP's text tower is not used"), ("logit_", "SigLIP's contrastive scale is not used"),
             ("vit_model.vision_model.head.", "the pooling head is not used (penultimate patch features are)")),
    # The model uses the penultimate layer's features, so the file's last layer(s) have no place.
    dropped_if_absent=(r"^vit_model\.vision_model\.encoder\.layers\.\d+\.",),
)
