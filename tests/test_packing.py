"""One set of attention rules: a whole packed sequence equals incremental inference with a KV cache."""

from __future__ import annotations

import torch

from unimedvl.model.packing import (
    LatentSegment,
    PackBuilder,
    SplitKind,
    TextSegment,
    VitSegment,
    block_attention_mask,
    grid_position_ids,
    pack_attention_mask,
    patchify,
    unpatchify,
)
from unimedvl.text.tokenizer import SpecialTokens

SPECIAL = SpecialTokens(bos=1, eos=2, start_of_image=3, end_of_image=4)


def test_mask_rules_on_a_small_pack() -> None:
    b = PackBuilder(SPECIAL)
    b.add(TextSegment((1, 2)))  # split 0
    b.add(LatentSegment((1, 1), noisy=True))  # split 1: 3 tokens
    b.add(TextSegment((1, 2), loss=True))  # split 2
    b.new_sample()
    b.add(TextSegment((1, 2)))  # split 3, other sample
    batch = b.build()
    layout = batch.layout
    m = pack_attention_mask(layout)
    assert torch.equal(batch.attention_mask, m)
    assert m[1, 0] and not m[0, 1]  # causal text
    assert m[2:5, 2:5].all() and m[2:5, 0:2].all()  # noise split: bidirectional, sees the past
    assert not m[5:7, 2:5].any()  # later text never sees the noisy latents
    assert m[5:7, 0:2].all()
    assert not m[7:, :7].any() and not m[:7, 7:].any()  # samples isolated
    assert layout.position_ids.tolist() == [0, 1, 2, 2, 2, 2, 3, 0, 1]  # noisy image does not advance RoPE
    assert layout.gen_expert.tolist() == [False, False, False, True, False, False, False, False, False]
    assert layout.split_kinds[2].item() == SplitKind.NOISE
    assert batch.starts == (0, 2, 5, 7) and batch.noisy_latent_rows() == [(3, 1)] and batch.num_mse_tokens == 1
    assert batch.ce_positions.tolist() == [5] and batch.ce_targets.tolist() == [2]  # row 5 predicts the next id


def test_dropped_image_keeps_its_rope_slot_and_clean_images_advance_it() -> None:
    b = PackBuilder(SPECIAL)
    b.add(TextSegment((1, 9, 2)))
    b.skip_image()  # condition dropout removed an image here
    b.add(VitSegment(torch.zeros(3, 14, 28), (1, 2)))
    b.add(LatentSegment((1, 1)))
    b.add(TextSegment((1, 2)))
    layout = b.build().layout
    assert layout.position_ids.tolist() == [0, 1, 2, 4, 4, 4, 4, 5, 5, 5, 6, 7]
    assert layout.gen_expert.tolist() == [False] * 8 + [True] + [False] * 3  # markers stay understanding

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

    # The same content as one packed sequence with the pack mask, through the training forward.
    b = PackBuilder(special)
    b.add(TextSegment(tuple(text1.tolist())))
    b.add(VitSegment(pixels, (2, 3)))
    b.add(TextSegment(tuple(text2.tolist())))
    b.add(LatentSegment((2, 3), noisy=True, tokens=noisy, timestep=0.6))
    b.add(TextSegment(tuple(text3.tolist())))
    b.new_sample()
    b.add(TextSegment(tuple(other.tolist())))
    batch = b.build()
    layout = batch.layout
    out = model(batch)
    torch.testing.assert_close(out.velocities[0], v, atol=2e-5, rtol=0)
    embeds = torch.cat([
        model.embed_ids(text1), model.frame_image_block(model.encode_vit(pixels).tokens, special), model.embed_ids(text2),
        model.frame_image_block(noisy_embeds, special), model.embed_ids(text3), model.embed_ids(other),
    ])
    hidden = model.language_model.model(embeds, layout.position_ids, gen_mask=layout.gen_expert,
                                        attn_mask=batch.attention_mask)
    n1, nv, n2, nn, n3 = len(text1), 6 + 2, len(text2), noisy.shape[0] + 2, len(text3)
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


def test_the_causal_kernel_path_equals_the_materialised_mask() -> None:
    """Text blocks take SDPA's causal kernel (issue 14); it must see exactly what block_attention_mask allows."""
    import torch

    from unimedvl.config import UnifiedConfig
    from unimedvl.model.builder import build_model

    torch.manual_seed(0)
    model = build_model(UnifiedConfig.tiny(), device="cpu").eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    lm = model.language_model.model
    prefix, block = torch.randn(5, 64), torch.randn(7, 64)
    with torch.no_grad():
        outs = []
        for causal in (True, False):
            cache = model.new_cache()
            lm(prefix, torch.arange(5), causal=causal, attn_mask=None if causal else block_attention_mask(5, 0, causal=True),
               cache=cache.open_block(5, commit=True))
            cache.commit(5, 5)
            mask = None if causal else block_attention_mask(7, 5, causal=True)
            outs.append(lm(block, torch.arange(5, 12), causal=causal, attn_mask=mask,
                           cache=cache.open_block(7, commit=True)))
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
