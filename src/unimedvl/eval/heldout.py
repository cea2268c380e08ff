"""Held-out training losses (text cross-entropy, latent MSE per token) on a corpus split."""

from __future__ import annotations

from dataclasses import replace

import torch

from unimedvl.inference.engine import UniMedVL
from unimedvl.train.config import DataConfig
from unimedvl.train.objective import pack_losses
from unimedvl.train.packer import CorpusIndex, PackMaker


@torch.no_grad()
def heldout_losses(engine: UniMedVL, corpus: str, *, split: str = "test", packs: int = 16, seed: int = 1234,
                   data: DataConfig | None = None) -> dict[str, float]:
    base = data or DataConfig()
    index = CorpusIndex(corpus, split)
    out = {}
    for family, key in (("understanding", "ce_per_token"), ("generation", "mse_per_token")):
        if not index.by_family[family]:
            continue
        config = replace(base, mix={family: 1.0}, text_dropout=0.0, vit_dropout=0.0, vae_dropout=0.0)
        maker = PackMaker(index, engine.tokenizer, config, engine.config, seed=seed)
        total, count = 0.0, 0
        for i in range(packs):
            pack = maker.make(0, i)
            sums = pack_losses(engine.model, engine.vae, pack, timestep_shift=1.0)
            if family == "understanding":
                total, count = total + float(sums.ce_sum), count + pack.num_ce_tokens
            else:
                total, count = total + float(sums.mse_sum), count + pack.num_mse_tokens
        out[key] = total / max(count, 1)
    return out
