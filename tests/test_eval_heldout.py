"""Held-out losses go through the trainer's own packer and objective: finite, repeatable, and lower for a trained model."""

from __future__ import annotations

import math
from pathlib import Path

from unimedvl.assets import REFERENCE_TINY, UNIMEDVL_TINY
from unimedvl.eval.heldout import heldout_losses
from unimedvl.inference.engine import UniMedVL
from unimedvl.train.config import DataConfig


def test_heldout_losses_separate_a_trained_model_from_random_weights(train_corpus: Path) -> None:
    data = DataConfig(tokens_per_pack=160, max_tokens_per_sample=200)
    random_weights = UniMedVL.from_pretrained(REFERENCE_TINY)
    first = heldout_losses(random_weights, str(train_corpus), split="train", packs=2, data=data)
    assert set(first) == {"ce_per_token", "mse_per_token"} and all(math.isfinite(v) and v > 0 for v in first.values())
    assert heldout_losses(random_weights, str(train_corpus), split="train", packs=2, data=data) == first
    trained = heldout_losses(UniMedVL.from_pretrained(UNIMEDVL_TINY), str(train_corpus), split="train", packs=2, data=data)
    assert trained["ce_per_token"] < 0.5 * first["ce_per_token"]
