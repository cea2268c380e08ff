"""Batched decoding (issue 14 item 2, used by the server of issue 15): several contexts, one forward per token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unimedvl.assets import default_checkpoint
from unimedvl.inference.engine import TextOptions, UniMedVL

QUESTIONS = ["What imaging modality is this?", "Is there pneumonia?",
             "Describe the findings in this image in one sentence, please, with as much detail as you can."]


@pytest.fixture(scope="module")
def tiny() -> UniMedVL:
    return UniMedVL.from_pretrained(default_checkpoint(), mode="understanding")


def _contexts(model: UniMedVL, images: list[Path]) -> list:
    return [model.ask_context([image] if i != 1 else [], q) for i, (image, q) in enumerate(zip(images, QUESTIONS))]


@pytest.mark.parametrize("which", ["fixture", "tiny"])
def test_batched_logits_and_answers_equal_one_at_a_time(which: str, engine: UniMedVL, tiny: UniMedVL,
                                                        cxr_path: Path, mri_path: Path) -> None:
    model = engine if which == "fixture" else tiny
    images = [cxr_path, mri_path, cxr_path]
    options = [TextOptions(max_new_tokens=n) for n in (12, 5, 9)]  # different lengths: rows leave the batch
    alone = [model.generate_text(ctx, o) for ctx, o in zip(_contexts(model, images), options)]
    together = model.generate_text_batch(_contexts(model, images), options)
    assert [a.token_ids for a in together] == [a.token_ids for a in alone]
    assert [a.finished for a in together] == [a.finished for a in alone]

    # logits of one batched step against each context's own step
    single = [model.start_decoding(ctx) for ctx in _contexts(model, images)]
    batch = [model.start_decoding(ctx) for ctx in _contexts(model, images)]
    seen_single: list[torch.Tensor] = []
    seen_batch: list[torch.Tensor] = []
    for state in single:
        model.decode_together([state], on_logits=seen_single.append)
    model.decode_together(batch, on_logits=seen_batch.append)
    for a, b in zip(seen_single, seen_batch):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())
    assert [s.context.length for s in batch] == [s.context.length for s in single]


def test_sampling_in_a_batch_follows_each_requests_seed(tiny: UniMedVL, cxr_path: Path, mri_path: Path) -> None:
    images = [cxr_path, mri_path, cxr_path]
    options = TextOptions(max_new_tokens=8, do_sample=True, temperature=1.5)
    alone = [tiny.generate_text(ctx, options, generator=torch.Generator().manual_seed(s))
             for s, ctx in enumerate(_contexts(tiny, images))]
    together = tiny.generate_text_batch(_contexts(tiny, images), options,
                                        generators=[torch.Generator().manual_seed(s) for s in range(3)])
    assert [a.token_ids for a in together] == [a.token_ids for a in alone]


def test_forks_of_one_context_decode_together(tiny: UniMedVL, cxr_path: Path) -> None:
    ctx = tiny.ask_context([cxr_path], QUESTIONS[0])
    a, b = ctx.fork(), ctx.fork()
    logits = tiny.model.decode_batch([a, b], torch.tensor([1, 2]))
    assert a.store is not b.store and a.length == b.length == ctx.length + 1
    assert torch.allclose(logits[0], tiny.model.decode_step(ctx.fork(), torch.tensor([1]))[0], atol=1e-4)
    assert torch.allclose(logits[1], tiny.model.decode_step(ctx.fork(), torch.tensor([2]))[0], atol=1e-4)
    answers = tiny.generate_text_batch([ctx, ctx], TextOptions(max_new_tokens=4))
    assert answers[0].token_ids == answers[1].token_ids == tiny.generate_text(ctx, TextOptions(max_new_tokens=4)).token_ids


def test_min_new_tokens_holds_back_the_end(tiny: UniMedVL, cxr_path: Path) -> None:
    ctx = tiny.ask_context([cxr_path], QUESTIONS[0])
    short = tiny.generate_text(ctx, TextOptions(max_new_tokens=40))
    assert short.finished and len(short.token_ids) < 20
    long = tiny.generate_text(ctx, TextOptions(max_new_tokens=40, min_new_tokens=30))
    assert len(long.token_ids) >= 30 and long.token_ids[:1] == short.token_ids[:1]
    with pytest.raises(Exception, match="min_new_tokens"):
        TextOptions(max_new_tokens=4, min_new_tokens=5)
