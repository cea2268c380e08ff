"""The server with the official `openai` Python client, unchanged, on UniMedVL-tiny (issue 15, done-when 1)."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import nibabel
import numpy as np
import openai
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from serve_helpers import data_url, decode_png, running_server

from unimedvl.assets import default_checkpoint
from unimedvl.imaging.pixels import load_image
from unimedvl.imaging.reader import ReadOptions
from unimedvl.inference.engine import TextOptions, UniMedVL
from unimedvl.model.sampling import GuidanceOptions
from unimedvl.serve.settings import ServerSettings

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def model() -> UniMedVL:
    return UniMedVL.from_pretrained(default_checkpoint())


@pytest.fixture(scope="module")
def server(model: UniMedVL):  # noqa: ANN201
    with running_server(model, ServerSettings.tiny(api_key=KEY)) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # noqa: ANN001
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=60)


def _ask(cxr: Path, question: str) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(cxr.read_bytes(), "image/png")}},
        {"type": "text", "text": question}]}]


def test_models_lists_the_model_and_its_sizes(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["unimedvl-tiny"]
    extra = models.data[0].model_extra["unimedvl"]
    assert extra["trained_sizes"] == [64, 128] and extra["generation"] is True


def test_chat_answers_as_the_engine_does(client: openai.OpenAI, model: UniMedVL, cxr_path: Path) -> None:
    question = "Does this chest X-ray show pneumonia? Answer yes or no."
    reply = client.chat.completions.create(model="unimedvl-tiny", messages=_ask(cxr_path, question), max_tokens=16)
    expected = model.ask([cxr_path], question, options=TextOptions(max_new_tokens=16)).text
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 0

    chunks = list(client.chat.completions.create(model="unimedvl-tiny", messages=_ask(cxr_path, question),
                                                 max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason is not None


def test_sampling_is_seeded(client: openai.OpenAI, cxr_path: Path) -> None:
    def run(seed: int) -> str:
        return client.chat.completions.create(messages=_ask(cxr_path, "Describe this image."), model="unimedvl-tiny",
                                              max_tokens=12, temperature=1.3, top_p=0.95, seed=seed
                                              ).choices[0].message.content
    assert run(1) == run(1)


def test_dicom_and_nifti_data_urls(client: openai.OpenAI, model: UniMedVL, tmp_path: Path) -> None:
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    question = "What imaging modality is this?"
    reply = client.chat.completions.create(
        model="unimedvl-tiny", max_tokens=8,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(ct, "application/dicom")},
             "image_options": {"window": "lung"}},
            {"type": "text", "text": question}]}])
    expected = model.ask([load_image(ct, options=ReadOptions(window="lung"))], question,
                         options=TextOptions(max_new_tokens=8)).text
    assert reply.choices[0].message.content == expected
    volume = np.random.default_rng(0).normal(100, 20, (40, 40, 20)).astype(np.float32)
    nifti = gzip.compress(nibabel.Nifti1Image(volume, np.eye(4)).to_bytes())
    reply = client.chat.completions.create(
        model="unimedvl-tiny", max_tokens=8, extra_body={"image_options": {"slice": 5}},
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(nifti, "application/x-nifti")}},
            {"type": "text", "text": question}]}])
    assert reply.choices[0].message.content


def test_images_generate_and_edit(client: openai.OpenAI, model: UniMedVL, mri_path: Path) -> None:
    result = client.images.generate(model="unimedvl-tiny", prompt="A brain MRI.", size="64x64", n=2,
                                    response_format="b64_json", extra_body={"num_inference_steps": 4, "seed": 3})
    images = [decode_png(d.b64_json) for d in result.data]
    assert [i.size for i in images] == [(64, 64), (64, 64)]
    # what the checkpoint recommends (sampling_config.json: text scale 6), with the request's steps
    expected = model.generate("A brain MRI.", height=64, width=64, seed=3,
                              guidance=GuidanceOptions.text_to_image(num_timesteps=4, text_scale=6.0))
    assert np.array_equal(np.asarray(images[0].convert("RGB")), np.asarray(expected))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # seeds 3 and 4
    with mri_path.open("rb") as handle:
        edited = client.images.edit(model="unimedvl-tiny", image=handle, prompt="Increase the resolution 2 times.",
                                    extra_body={"num_inference_steps": 4, "seed": 0})
    picture = decode_png(edited.data[0].b64_json)
    assert picture.size == model.edit_size(*Image.open(mri_path).size)[::-1]


def test_chat_with_image_output(client: openai.OpenAI, cxr_path: Path) -> None:
    reply = client.chat.completions.create(
        model="unimedvl-tiny", messages=_ask(cxr_path, "Show this X-ray with pneumonia."),
        extra_body={"modalities": ["text", "image"], "num_inference_steps": 3, "seed": 0})
    parts = reply.choices[0].message.content
    assert [p["type"] for p in parts] == ["text", "image_url"] and parts[0]["text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_errors_reach_the_client_as_its_exceptions(server, client: openai.OpenAI, cxr_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong-key-000", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="max_tokens must be in"):
        client.chat.completions.create(model="unimedvl-tiny", messages=_ask(cxr_path, "Hi"), max_tokens=100_000)
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.chat.completions.create(model="gpt-4o", messages=_ask(cxr_path, "Hi"))
    with pytest.raises(openai.BadRequestError, match="does not fetch images"):
        client.chat.completions.create(model="unimedvl-tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}, {"type": "text", "text": "?"}]}])
    with pytest.raises(openai.BadRequestError, match="size"):
        client.images.generate(prompt="x", size="1000x1000")


def test_concurrent_requests_are_decoded_together(server, client: openai.OpenAI, model: UniMedVL,  # noqa: ANN001
                                                  cxr_path: Path, mri_path: Path) -> None:
    questions = [(cxr_path if i % 2 else mri_path, f"Question {i}: what imaging modality is this?") for i in range(8)]
    expected = [model.ask([p], q, options=TextOptions(max_new_tokens=24, min_new_tokens=24)).text for p, q in questions]
    scheduler = server[1].state.scheduler
    scheduler.largest_batch = 0
    answers: list[str | None] = [None] * len(questions)
    barrier = threading.Barrier(len(questions))

    def one(i: int) -> None:
        barrier.wait()
        path, question = questions[i]
        answers[i] = client.chat.completions.create(model="unimedvl-tiny", messages=_ask(path, question),
                                                    max_tokens=24, extra_body={"min_tokens": 24}
                                                    ).choices[0].message.content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert answers == expected  # batching changes nothing in the answers
    assert scheduler.largest_batch >= 2

