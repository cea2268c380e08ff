"""One set of attention rules: a whole packed sequence equals incremental inference with a KV cache."""

from __future__ import annotations

import torch

from unimedvl.model.packing import (PackBuilder, SplitKind, block_attention_mask, grid_position_ids,
                                    pack_attention_mask, patchify, unpatchify)


def test_mask_rules_on_a_small_pack() -> None:
    b = PackBuilder()
    b.add_text(2)  # split 0
    b.add_image(1, vae=True, noisy=True)  # split 1: 3 tokens
    b.add_text(2)  # split 2
    b.new_sample()
    b.add_text(2)  # split 3, other sample
    layout = b.build()
    m = pack_attention_mask(layout)
    assert m[1, 0] and not m[0, 1]  # causal text
    assert m[2:5, 2:5].all() and m[2:5, 0:2].all()  # noise split: bidirectional, sees the past
    assert not m[5:7, 2:5].any()  # later text never sees the noisy latents
    assert m[5:7, 0:2].all()
    assert not m[7:, :7].any() and not m[:7, 7:].any()  # samples isolated
    assert layout.position_ids.tolist() == [0, 1, 2, 2, 2, 2, 3, 0, 1]  # noisy image does not advance RoPE
    assert layout.gen_expert.tolist() == [False, False, False, True, False, False, False, False, False]
    assert layout.split_kinds[2].item() == SplitKind.NOISE


def test_block_mask_is_bottom_right_aligned() -> None:
    m = block_attention_mask(3, 2, causal=True)
    assert m.tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]
    assert block_attention_mask(1, 5, causal=True) is None
    assert block_attention_mask(4, 5, causal=False) is None


def test_patchify_round_trip_and_order() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (6, 8)
    assert tokens[1].tolist() == [2, 26, 3, 27, 8, 32, 9, 33]  # (dy, dx, c) order of patch (0, 1)
    assert torch.equal(unpatchify(tokens, 2, 3, 2, 2), x)
    assert grid_position_ids(2, 3, 64).tolist() == [0, 1, 2, 64, 65, 66]


@torch.no_grad()
def test_packed_forward_equals_incremental_inference(engine) -> None:
    model, special, tok = engine.model, engine.special, engine.tokenizer
    torch.manual_seed(0)
    pixels = torch.rand(3, 28, 42) * 2 - 1
    noisy = torch.randn(6, 64)
    text1 = torch.tensor(tok.frame("Chest X-ray."))
    text2 = torch.tensor(tok.frame("Make it show an effusion."))
    text3 = torch.tensor(tok.frame("After."))
    other = torch.tensor(tok.frame("Another sample in the same pack."))

    # Incremental, through the inference primitives and a KV cache.
    ctx = model.new_cache()
    h1 = model.prefill_text(ctx, text1)
    model.prefill_vit_image(ctx, pixels, special)
    h2 = model.prefill_text(ctx, text2)
    noisy_embeds = model.embed_latents(noisy, torch.tensor(0.6), (2, 3))
    v = model.velocity(ctx, noisy_embeds, special)
    h3 = model.prefill_text(ctx, text3)  # text after the generated image never sees its noisy tokens
    h_other = model.prefill_text(model.new_cache(), other)

    # The same content as one packed sequence with the pack mask.
    b = PackBuilder()
    b.add_text(len(text1))
    vit_tokens = model.encode_vit(pixels).tokens
    b.add_image(vit_tokens.shape[0], vae=False)
    b.add_text(len(text2))
    b.add_image(noisy.shape[0], vae=True, noisy=True)
    b.add_text(len(text3))
    b.new_sample()
    b.add_text(len(other))
    layout = b.build()
    embeds = torch.cat([
        model.embed_ids(text1), model.frame_image_block(vit_tokens, special), model.embed_ids(text2),
        model.frame_image_block(noisy_embeds, special), model.embed_ids(text3), model.embed_ids(other),
    ])
    hidden = model.language_model.model(embeds, layout.position_ids, model.new_cache(), gen_mask=layout.gen_expert,
                                        attn_mask=pack_attention_mask(layout), commit=False)
    n1, nv, n2, nn, n3 = len(text1), vit_tokens.shape[0] + 2, len(text2), noisy.shape[0] + 2, len(text3)
    o = 0
    torch.testing.assert_close(hidden[o:o + n1], h1, atol=2e-5, rtol=0)
    o += n1 + nv
    torch.testing.assert_close(hidden[o:o + n2], h2, atol=2e-5, rtol=0)
    o += n2
    torch.testing.assert_close(model.llm2vae(hidden[o + 1:o + nn - 1]), v, atol=2e-5, rtol=0)
    o += nn
    torch.testing.assert_close(hidden[o:o + n3], h3, atol=2e-5, rtol=0)
    o += n3
    torch.testing.assert_close(hidden[o:], h_other, atol=2e-5, rtol=0)
