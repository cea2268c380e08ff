"""Every task from one loaded model: questions, reports, text-to-image, editing, interleaved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimedvl.errors import InputError
from unimedvl.inference.engine import VLM_THINK_SYSTEM_PROMPT, GenerationTrace, TextOptions
from unimedvl.model.sampling import GuidanceOptions

FAST = GuidanceOptions(num_timesteps=4)


def test_ask_is_greedy_and_deterministic(engine, cxr_path: Path) -> None:
    a = engine.ask([cxr_path], "What imaging modality is this?", max_new_tokens=12)
    b = engine.ask(cxr_path, "What imaging modality is this?", max_new_tokens=12)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12 and not a.finished
    assert a.text == engine.tokenizer.decode(a.token_ids)


def test_ask_matches_a_manual_chat_pass(engine, mri_path: Path) -> None:
    # Bagel.chat: ViT block (VQA resize rule), question, decode from <|im_start|>.
    from unimedvl.imaging.pixels import load_image, to_tensor

    ctx = engine.new_context()
    engine.model.prefill_vit_image(ctx, to_tensor(engine.vqa_vit_rule(load_image(mri_path))), engine.special)
    engine.add_text(ctx, "Is there a tumour?")
    logits = engine.model.decode_step(ctx, torch.tensor([engine.special.bos]))
    answer = engine.ask([mri_path], "Is there a tumour?", max_new_tokens=1)
    assert answer.token_ids == [int(logits.argmax())]


def test_sampling_is_seeded_and_top_p_narrows(engine, cxr_path: Path) -> None:
    opts = dict(max_new_tokens=16, do_sample=True, temperature=1.5)
    a = engine.ask([cxr_path], "Report.", seed=3, **opts)
    b = engine.ask([cxr_path], "Report.", seed=3, **opts)
    c = engine.ask([cxr_path], "Report.", seed=4, **opts)
    assert a.token_ids == b.token_ids != c.token_ids
    greedy = engine.ask([cxr_path], "Report.", max_new_tokens=16).token_ids
    tiny_p = engine.ask([cxr_path], "Report.", seed=5, do_sample=True, top_p=1e-6, max_new_tokens=16).token_ids
    assert tiny_p == greedy  # top-p that keeps one token is greedy


def test_multiple_images_and_think_mode_change_the_context(engine, cxr_path: Path, mri_path: Path) -> None:
    one = engine.ask([cxr_path], "Compare.", max_new_tokens=6)
    two = engine.ask([cxr_path, mri_path], "Compare.", max_new_tokens=6)
    think = engine.ask([cxr_path], "Compare.", think=True, max_new_tokens=6)
    assert len({tuple(one.token_ids), tuple(two.token_ids), tuple(think.token_ids)}) > 1
    assert VLM_THINK_SYSTEM_PROMPT.startswith("You should first think")


def test_text_generation_stops_at_im_end(engine, monkeypatch) -> None:
    calls = []
    real = engine.model.decode_step

    def fake_decode(ctx, ids):  # noqa: ANN001, ANN202
        logits = real(ctx, ids)
        calls.append(1)
        if len(calls) == 3:
            logits = torch.full_like(logits, -1e9)
            logits[0, engine.special.eos] = 0
        return logits

    monkeypatch.setattr(engine.model, "decode_step", fake_decode)
    answer = engine.generate_text(engine.new_context(), TextOptions(max_new_tokens=10))
    assert answer.finished and len(answer.token_ids) == 2 and len(calls) == 3


def test_generate_is_deterministic_under_a_seed(engine) -> None:
    a = engine.generate("A chest X-ray with pneumonia.", height=32, width=48, guidance=FAST, seed=1)
    b = engine.generate("A chest X-ray with pneumonia.", height=32, width=48, guidance=FAST, seed=1)
    c = engine.generate("A chest X-ray with pneumonia.", height=32, width=48, guidance=FAST, seed=2)
    assert isinstance(a, Image.Image) and a.size == (48, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_t2i_contexts_follow_the_reference(engine) -> None:
    trace = GenerationTrace()
    engine.interleave(["Axial CT."], height=16, width=16, guidance=GuidanceOptions(num_timesteps=3), seed=0,
                      trace=trace)
    n = len(engine.tokenizer.frame("Axial CT."))
    assert trace.contexts == {"cond": (n, n), "text_uncond": (0, 0), "image_uncond": (n, n)}
    assert len(trace.steps) == 2 and set(trace.steps[0].branches) == {"cond", "text_uncond"}


def test_edit_keeps_the_resized_input_size_and_uses_three_branches(engine, mri_path: Path) -> None:
    trace = GenerationTrace()
    out = engine.edit(mri_path, "Convert this T1 slice to FLAIR.", guidance=GuidanceOptions.editing(num_timesteps=3),
                      seed=0, trace=trace)
    assert out.size == (240, 240)
    assert set(trace.steps[0].branches) == {"cond", "text_uncond", "image_uncond"}
    image_tokens = (240 // 16) ** 2 + 2
    assert trace.contexts["text_uncond"][1] == 2 and trace.contexts["cond"][1] > 2
    assert trace.contexts["text_uncond"][0] > image_tokens  # VAE block + ViT block
    steps = []
    engine.edit(mri_path, "Convert.", guidance=GuidanceOptions.editing(num_timesteps=3), seed=0, height=32, width=64,
                progress=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 2), (2, 2)]


def test_understand_first_and_interleaved_text_output(engine, mri_path: Path) -> None:
    _, answer = engine.interleave([mri_path, "What do you see?"], output="text", text_options=TextOptions(max_new_tokens=5))
    assert answer is not None and len(answer.token_ids) <= 5
    image = engine.edit(mri_path, "Enhance.", understand_first=True, guidance=GuidanceOptions.editing(num_timesteps=2),
                        seed=0)
    assert image.size == (240, 240)
    image, thought = engine.interleave(["A fundus photo."], think=True, height=16, width=16,
                                       guidance=GuidanceOptions(num_timesteps=2),
                                       text_options=TextOptions(max_new_tokens=4), seed=0)
    assert image is not None and thought is not None and len(thought.token_ids) <= 4


def test_vae_posterior_sampling_is_an_option(engine, mri_path: Path) -> None:
    from unimedvl.imaging.pixels import load_image

    image = load_image(mri_path)
    mean = engine.encode_image(image)
    assert torch.equal(mean, engine.encode_image(image))
    s1 = engine.encode_image(image, sample=True, generator=torch.Generator().manual_seed(0))
    s2 = engine.encode_image(image, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and not torch.equal(s1, mean)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.ask([], ""), "question is empty"),
        (lambda e: e.ask([], None), "question must be a string"),
        (lambda e: e.generate("x", height=20, width=32), "height must be a multiple of 16"),
        (lambda e: e.generate("x", height=32, width=2048), "width must be a multiple of 16"),
        (lambda e: e.generate("   "), "prompt is empty"),
        (lambda e: e.interleave(["x"], height=16, width=16, noise=torch.zeros(3, 64)), "noise must have shape"),
        (lambda e: e.interleave([]), "at least one"),
        (lambda e: e.ask([], "q", max_new_tokens=0), "max_new_tokens"),
        (lambda e: e.ask([], "q", do_sample=True, temperature=0), "temperature"),
        (lambda e: e.edit("/no/such.png", "x"), "image file not found"),
    ],
)
def test_bad_input_gives_one_clear_error(engine, call, message: str) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=message):
        call(engine)


def test_think_mode_is_refused_for_a_checkpoint_not_trained_for_it(checkpoint_copy: Path, cxr_path: Path) -> None:
    import json

    from unimedvl.checkpoint.folder import load_checkpoint
    from unimedvl.errors import CheckpointError
    from unimedvl.inference.engine import UniMedVL

    assert UniMedVL(load_checkpoint(checkpoint_copy)).think_trained is None  # a released layout: not recorded
    (checkpoint_copy / "capabilities.json").write_text(json.dumps({"think": False}))
    engine = UniMedVL(load_checkpoint(checkpoint_copy))
    with pytest.raises(InputError, match="not trained for think mode"):
        engine.ask([cxr_path], "Is there pneumonia?", think=True)
    with pytest.raises(InputError, match="not trained for think mode"):
        engine.generate("A chest X-ray.", think=True, height=32, width=32)
    assert engine.ask([cxr_path], "Is there pneumonia?", max_new_tokens=2).token_ids  # without think it answers
    (checkpoint_copy / "capabilities.json").write_text(json.dumps({"think": "maybe"}))
    with pytest.raises(CheckpointError, match="capabilities.json"):
        load_checkpoint(checkpoint_copy)
