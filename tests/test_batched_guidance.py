"""Guidance branches in one forward (issue 14, item 2): the same velocities as one forward per branch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unimedvl.inference.engine import GenerationTrace, UniMedVL
from unimedvl.model.sampling import GuidanceOptions


def _run(engine: UniMedVL, batched: bool, kind: str, image: Path) -> GenerationTrace:
    engine.batch_guidance = batched
    trace = GenerationTrace()
    try:
        if kind == "t2i":
            engine.generate("A chest X-ray.", height=32, width=48, seed=0, trace=trace,
                            guidance=GuidanceOptions.text_to_image(num_timesteps=6))
        else:
            engine.edit(image, "Convert to FLAIR.", seed=0, trace=trace, height=32, width=32,
                        guidance=GuidanceOptions.editing(num_timesteps=6))
    finally:
        engine.batch_guidance = "auto"
    return trace


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_batched_branches_match_one_forward_each(engine: UniMedVL, mri_path: Path, kind: str) -> None:
    alone, together = _run(engine, False, kind, mri_path), _run(engine, True, kind, mri_path)
    assert len(alone.steps) == len(together.steps) == 5
    for a, b in zip(alone.steps, together.steps):
        assert a.branches.keys() == b.branches.keys()
        for name in a.branches:
            assert torch.allclose(a.branches[name], b.branches[name], atol=1e-5, rtol=1e-4), name
    assert {"cond", "text_uncond", "image_uncond"} <= set(together.steps[0].branches) or kind == "t2i"
    assert torch.allclose(alone.final_latent, together.final_latent, atol=1e-4)


def test_velocity_batch_equals_velocity_per_context(engine: UniMedVL) -> None:
    model, special = engine.model, engine.special
    base = engine.new_context()
    engine.add_text(base, "A brain MRI.")
    longer = base.fork()
    engine.add_text(longer, "With a lesion.")  # `longer` owns the store's tail; `base` is a fork behind it
    other = engine.new_context()
    engine.add_text(other, "Something else entirely.")
    x = torch.randn(12, model.config.patch_latent_dim, generator=torch.Generator().manual_seed(0))
    embeds = model.embed_latents(x, torch.tensor(0.7), (3, 4))
    caches = [longer, base, other, longer.fork()]  # two contexts on one store's tail, one behind it, one apart
    together = model.velocity_batch(caches, embeds, special)
    for cache, v in zip(caches, together):
        assert torch.allclose(v, model.velocity(cache, embeds, special), atol=1e-5)
    assert [c.length for c in caches] == [longer.length, base.length, other.length, longer.length]  # nothing cached
    assert np.isfinite(torch.stack(together).numpy()).all()


def test_feature_caching_skips_network_calls_in_the_engine(engine: UniMedVL, monkeypatch) -> None:
    calls = []
    real = engine.model.velocity_batch

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "velocity_batch", counted)
    full = engine.generate("A chest X-ray.", height=32, width=32, seed=0,
                           guidance=GuidanceOptions.text_to_image(num_timesteps=13, interval=(0.0, 1.0)))
    uncached_calls = len(calls)
    calls.clear()
    fast = engine.generate("A chest X-ray.", height=32, width=32, seed=0,
                           guidance=GuidanceOptions.text_to_image(num_timesteps=13, interval=(0.0, 1.0), cache_interval=3))
    assert uncached_calls == 12 and len(calls) == 5  # steps 0, 1, 3, 6, 9
    assert np.asarray(fast).shape == np.asarray(full).shape
