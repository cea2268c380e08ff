"""Prefills that keep only their last rows (issue 14): the cache is unchanged, the kept rows are the same."""

from __future__ import annotations

import pytest
import torch

from unimedvl.model.packing import SplitKind, split_positions
from unimedvl.model.qwen2_mot import Routing


def _cache_tensors(cache) -> list[torch.Tensor]:  # noqa: ANN001
    store, n = cache.store, cache.length
    return [t[:, :n] for t in store.keys + store.values]


def _assert_same_cache(a, b) -> None:  # noqa: ANN001
    assert (a.length, a.rope) == (b.length, b.rope)
    for x, y in zip(_cache_tensors(a), _cache_tensors(b), strict=True):
        assert torch.equal(x, y)  # the keys and values are computed exactly as before, bit for bit


@torch.no_grad()
def test_a_prompt_prefill_keeps_its_cache_and_last_rows(engine) -> None:
    model, special, tok = engine.model, engine.special, engine.tokenizer
    torch.manual_seed(0)
    pixels = torch.rand(3, 28, 42) * 2 - 1
    ids = torch.tensor(tok.frame("Is there a pleural effusion on this chest X-ray?"))
    caches, hidden = {}, {}
    for keep in (None, 3, 1, 0):
        ctx = model.new_cache()
        model.prefill_vit_image(ctx, pixels, special)
        hidden[keep] = model.prefill_text(ctx, ids, keep_last=keep)
        caches[keep] = ctx
    assert hidden[None].shape[0] == ids.numel() and hidden[3].shape[0] == 3 and hidden[0].shape[0] == 0
    torch.testing.assert_close(hidden[3], hidden[None][-3:], atol=2e-5, rtol=0)
    torch.testing.assert_close(hidden[1], hidden[None][-1:], atol=2e-5, rtol=0)
    for keep in (3, 1, 0):
        _assert_same_cache(caches[keep], caches[None])
    # Decoding after either prefill continues identically.
    tokens = {}
    for keep in (None, 0):
        ctx, token, out = caches[keep], torch.tensor([special.bos]), []
        for _ in range(6):
            token = model.decode_step(ctx, token).argmax(-1)
            out.append(int(token))
        tokens[keep] = out
    assert tokens[0] == tokens[None]


@torch.no_grad()
def test_mixed_expert_blocks_route_their_kept_rows(engine) -> None:
    """A latent block: markers with the understanding expert, latents with the generation expert."""
    model, special = engine.model, engine.special
    torch.manual_seed(1)
    latent = torch.randn(6, 64)
    embeds = model.embed_latents(latent, torch.tensor(0.0), (2, 3))
    full, kept = {}, {}
    for keep in (None, 2, 1, 0):
        ctx = model.new_cache()
        model.prefill_text(ctx, torch.tensor([5, 6, 7]))
        kept[keep] = model._latent_block(ctx, embeds, special, SplitKind.FULL, keep_last=keep)
        full[keep] = ctx
    # The last two rows: one latent (generation expert) and the end marker (understanding expert).
    torch.testing.assert_close(kept[2], kept[None][-2:], atol=2e-5, rtol=0)
    torch.testing.assert_close(kept[1], kept[None][-1:], atol=2e-5, rtol=0)
    for keep in (2, 1, 0):
        _assert_same_cache(full[keep], full[None])


@torch.no_grad()
def test_a_fork_behind_the_tail_keeps_its_mask(engine) -> None:
    """A noisy block of a fork behind the store's tail masks the owner's rows; its kept rows see the same keys."""
    model = engine.model
    lm = model.language_model.model
    base = model.new_cache()
    model.prefill_text(base, torch.tensor([5, 6, 7, 8]))
    behind = base.fork()
    model.prefill_text(base, torch.tensor([9, 10]))  # `base` owns the tail; `behind` now masks rows 4-5
    embeds = model.embed_ids(torch.tensor([11, 12, 13]))
    positions = torch.tensor(split_positions(SplitKind.NOISE, behind.rope, 3))
    full = lm(embeds, positions, cache=behind.open_block(3, commit=False))
    last = lm(embeds, positions, cache=behind.open_block(3, commit=False), keep_last=1)
    torch.testing.assert_close(last, full[-1:], atol=2e-5, rtol=0)


def test_routing_of_the_last_rows() -> None:
    mixed = Routing.from_mask(torch.tensor([False, True, True, True, False]))
    assert mixed.last(1, 5).single_expert is False  # the end marker alone
    tail = mixed.last(3, 5)
    assert tail.single_expert is None and tail.und_rows.tolist() == [2] and tail.gen_rows.tolist() == [0, 1]
    gen_only = Routing.from_mask(torch.tensor([False, True, True, False])).last(4, 4)
    assert gen_only.und_rows.tolist() == [0, 3] and gen_only.gen_rows.tolist() == [1, 2]
    assert Routing.from_mask(torch.tensor([False, True, True, False])).last(3, 4).last(2, 3).single_expert is None
    only_gen = Routing.from_mask(torch.tensor([False, True, True])).last(2, 3)
    assert only_gen.single_expert is True
    assert Routing().last(2, 5).single_expert is False


@torch.no_grad()
def test_keep_last_refuses_what_it_cannot_do(engine) -> None:
    lm = engine.model.language_model.model
    embeds = engine.model.embed_ids(torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="keep_last"):
        lm(embeds, torch.tensor([0, 1]), causal=True, keep_last=1)  # no cache: a training pack keeps every row
    with pytest.raises(ValueError, match="keep_last"):
        lm(embeds, torch.tensor([0, 1]), causal=True, cache=engine.model.new_cache().open_block(2, commit=True),
           keep_last=3)
