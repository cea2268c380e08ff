"""The one place that constructs the network and the VAE from a config.

Loading (`checkpoint/folder.py`), training initialisation (`train/init.py`) and the size report
(`tools/model_size.py`) all build through here. On the meta device nothing is allocated: the
loader then fills every tensor from a memory-mapped file, and the size report only counts.
"""

from __future__ import annotations

import torch

from unimedvl.config import UnifiedConfig, VAEConfig
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder


def build_model(config: UnifiedConfig, *, device: str | torch.device = "meta") -> UniMedVLModel:
    """The unified network (released key names) with uninitialised weights on `device`.

    On a real device the sin-cos tables are filled (they are fixed, not learnt); every other
    weight is left for a loader or an initialiser to fill.
    """
    with torch.device(device):
        model = UniMedVLModel(config)
    if torch.device(device).type != "meta":
        model.latent_pos_embed.reset_table()
        model.vit_pos_embed.reset_table()
    return model


def build_vae(config: VAEConfig, *, device: str | torch.device = "meta") -> AutoEncoder:
    """The FLUX autoencoder (its own file, `ae.safetensors`) with uninitialised weights on `device`."""
    with torch.device(device):
        return AutoEncoder(config)
