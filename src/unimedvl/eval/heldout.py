"""Held-out training losses (text cross-entropy, latent MSE per token) on a corpus split."""

from __future__ import annotations

import torch

from unimedvl.engine import UniMedVL
from unimedvl.train.config import DataConfig
from unimedvl.train.data import CorpusIndex, PackMaker
from unimedvl.train.objective import pack_losses


@torch.no_grad()
def heldout_losses(engine: UniMedVL, corpus: str, *, split: str = "test", packs: int = 16, seed: int = 1234,
                   data: DataConfig | None = None) -> dict[str, float]:
    base = data or DataConfig()
    index = CorpusIndex(corpus, split)
    out = {}
    for family, key in (("understanding", "ce_per_token"), ("generation", "mse_per_token")):
        if not index.by_family[family]:
            continue
        config = DataConfig(**{**base.__dict__, "mix": {family: 1.0}, "text_dropout": 0.0, "vit_dropout": 0.0,
                               "vae_dropout": 0.0})
        maker = PackMaker(index, engine.tokenizer, config, seed=seed, latent_downsample=engine.config.latent_downsample,
                          vit_patch=engine.config.vit.patch_size)
        total, count = 0.0, 0
        for i in range(packs):
            pack = maker.make(0, i)
            sums = pack_losses(engine.model, engine.vae, pack, engine.special, timestep_shift=1.0)
            if family == "understanding":
                total, count = total + float(sums.ce_sum), count + pack.num_ce_tokens
            else:
                total, count = total + float(sums.mse_sum), count + pack.num_mse_tokens
        out[key] = total / max(count, 1)
    return out
