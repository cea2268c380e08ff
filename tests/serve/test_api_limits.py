"""Bad input, limits, keys, back-pressure, timeouts and cancellation (issue 15, item 3): 4xx JSON, never a 500."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import data_url, png_bytes, running_server

from unimedvl.assets import default_checkpoint
from unimedvl.config import ConfigError
from unimedvl.inference.engine import UniMedVL
from unimedvl.serve.app import create_app
from unimedvl.serve.scheduler import Job
from unimedvl.serve.settings import ServerSettings, check_bind

SMALL_PNG = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def model() -> UniMedVL:
    return UniMedVL.from_pretrained(default_checkpoint())


@pytest.fixture(scope="module")
def api(model: UniMedVL):  # noqa: ANN201
    with TestClient(create_app(model, ServerSettings.tiny(max_images=2, max_prompt_tokens=200))) as client:
        yield client


def _chat(content: object, **extra: object) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def _image(url: str, **extra: object) -> dict:
    return {"type": "image_url", "image_url": {"url": url}, **extra}


def _bomb_png() -> bytes:
    """A valid PNG header claiming 30000 x 30000 pixels over a few KB of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 30001 * 10)) + \
        chunk(b"IEND", b"")


CHAT_CASES = [
    (b"{not json", 400, "JSON"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    (_chat("hi", max_tokens=0), 400, "max_tokens must be in"),
    (_chat("hi", max_tokens="many"), 400, "max_tokens"),
    (_chat("hi", temperature=float("nan")), 400, "temperature"),
    (_chat("hi", top_p=1.5), 400, "top_p"),
    (_chat("hi", n=3), 400, "n must be 1"),
    (_chat("hi", model="other"), 404, "is not served here"),
    (_chat("hi", min_tokens=-1), 400, "min_new_tokens"),
    (_chat("word " * 400), 400, "at most 200 are accepted"),
    (_chat([{"type": "text"}]), 400, "needs `text`"),
    (_chat([_image("https://example.org/a.png"), {"type": "text", "text": "?"}]), 400, "does not fetch"),
    (_chat([_image("data:image/png;base64,%%%"), {"type": "text", "text": "?"}]), 400, "invalid base64"),
    (_chat([_image("data:image/png,rawbytes"), {"type": "text", "text": "?"}]), 400, "base64 data URL"),
    (_chat([_image(data_url(b"\x89PNG\r\n\x1a\nbroken", "image/png")), {"type": "text", "text": "?"}]), 400,
     "cannot read image"),
    (_chat([_image(data_url(_bomb_png(), "image/png")), {"type": "text", "text": "?"}]), 400, "too large"),
    (_chat([_image(data_url(SMALL_PNG, "image/png"))] * 3 + [{"type": "text", "text": "?"}]), 400, "at most 2 images"),
    (_chat([_image(data_url(SMALL_PNG, "image/png"), image_options={"window": "lungs"}), {"type": "text", "text": "?"}]),
     400, "unknown window"),
    (_chat([_image(data_url(b"\x00" * 200, "application/dicom")), {"type": "text", "text": "?"}]), 400, "DICOM"),
    (_chat([_image(data_url(SMALL_PNG, "image/png"))]), 400, "no text"),
    (_chat("hi", modalities=["image"], size="65x64"), 400, "size"),
]


@pytest.mark.parametrize("body, status, message", CHAT_CASES, ids=[str(i) for i in range(len(CHAT_CASES))])
def test_bad_chat_requests_are_4xx_in_the_openai_shape(api: TestClient, body: object, status: int,
                                                       message: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"]


IMAGE_CASES = [
    ({"prompt": "x", "size": "abc"}, 400, "size must look like"),
    ({"prompt": "x", "size": "1024x1024"}, 400, "trained to draw 64 and 128 px sides"),
    ({"prompt": "x", "size": "64x65"}, 400, "multiple of 16"),
    ({"prompt": "x", "n": 0}, 400, "n must be in"),
    ({"prompt": "x", "n": 50}, 400, "n must be in"),
    ({"prompt": "x", "response_format": "url"}, 400, "b64_json"),
    ({"prompt": "x", "num_inference_steps": 1000}, 400, "num_inference_steps must be in"),
    ({"prompt": "x", "guidance_scale": "high"}, 400, "guidance_scale"),
    ({"prompt": "   "}, 400, "prompt is empty"),
    ({}, 400, "prompt"),
]


@pytest.mark.parametrize("body, status, message", IMAGE_CASES, ids=[str(i) for i in range(len(IMAGE_CASES))])
def test_bad_image_requests(api: TestClient, body: dict, status: int, message: str) -> None:
    response = api.post("/v1/images/generations", json=body)
    assert response.status_code == status and message in response.json()["error"]["message"], response.text


def test_bad_edits_and_previews(api: TestClient) -> None:
    cases = [
        ({"prompt": "x"}, None, "needs an `image` file"),
        ({"prompt": "x"}, ("a.png", b"not an image"), "cannot read image"),
        ({"prompt": "x", "window": "lungs"}, ("a.png", SMALL_PNG), "unknown window"),
        ({"prompt": "x", "slice": "two"}, ("a.png", SMALL_PNG), "slice"),
        ({"prompt": ""}, ("a.png", SMALL_PNG), "prompt is empty"),
    ]
    for fields, upload, message in cases:
        files = {"image": upload} if upload else {"unused": ("u.txt", b"x")}
        response = api.post("/v1/images/edits", data=fields, files=files)
        assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    response = api.post("/v1/preview", files={"image": ("big.png", _bomb_png())})
    assert response.status_code == 400 and "too large" in response.json()["error"]["message"]


def test_size_limits_are_413(api: TestClient) -> None:
    big = b"\x00" * (5 * 1024 * 1024 // 2)  # above the 2 MiB image limit, its data URL below the 4 MiB body limit
    response = api.post("/v1/chat/completions", json=_chat([_image(data_url(big, "image/png")),
                                                            {"type": "text", "text": "?"}]))
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
    response = api.post("/v1/chat/completions", content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "request body is larger" in response.json()["error"]["message"]

    def chunks():  # noqa: ANN202 - no Content-Length: the limit applies while the body streams in
        for _ in range(6):
            yield b" " * (1024 * 1024)
    response = api.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_unknown_routes_and_methods_answer_in_the_same_shape(api: TestClient) -> None:
    assert api.get("/v1/nothing").json()["error"]["message"] == "not found"
    response = api.get("/v1/chat/completions")
    assert response.status_code == 405 and "error" in response.json()


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                             st.sampled_from(["messages", "role", "content", "type", "text", "image_url", "url",
                                              "max_tokens", "stream", "n", "model", "temperature", "modalities"]),
                             inner, max_size=4), max_leaves=10))
def test_random_bodies_never_give_a_500(api: TestClient, body: object) -> None:
    for route in ("/v1/chat/completions", "/v1/images/generations"):
        response = api.post(route, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        assert response.status_code < 500 or response.status_code == 503, (route, body, response.text)


def test_api_key_guards_every_route_but_health_and_the_page(model: UniMedVL) -> None:
    key = "secret-key-123"
    with TestClient(create_app(model, ServerSettings.tiny(api_key=key))) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200 and "unimedvl" in client.get("/").text
        for method, route in (("get", "/v1/models"), ("get", "/metrics"), ("post", "/v1/chat/completions"),
                              ("post", "/v1/images/generations"), ("post", "/v1/preview")):
            for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": key}):
                response = getattr(client, method)(route, headers=headers)
                assert response.status_code == 401, (route, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with pytest.raises(ConfigError, match="without --api-key"):
        check_bind("0.0.0.0", None, allow_remote=False)
    check_bind("0.0.0.0", key, allow_remote=False)
    check_bind("127.0.0.1", None, allow_remote=False)
    check_bind("::1", None, allow_remote=False)
    with pytest.raises(ConfigError, match="at least 8"):
        ServerSettings(api_key="short")


def _blocking_job(app, release: threading.Event) -> Job:  # noqa: ANN001
    import asyncio

    def run(job: Job) -> dict:
        release.wait(timeout=30)
        return {"images": 0, "data": []}
    return Job("image", asyncio.new_event_loop(), asyncio.Queue(), time.monotonic() + 60, run=run)


def test_full_queue_is_429_with_retry_after_and_queued_requests_time_out(model: UniMedVL) -> None:
    settings = ServerSettings.tiny(max_queue=1, request_timeout_s=0.5, retry_after_s=3)
    with TestClient(create_app(model, settings)) as client:
        scheduler = client.app.state.scheduler
        release = threading.Event()
        scheduler.submit(_blocking_job(client.app, release), 1)  # the worker takes it and blocks
        deadline = time.monotonic() + 5
        while scheduler.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        results: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: results.setdefault(
            "queued", client.post("/v1/chat/completions", json=_chat("hi"))))
        waiting.start()
        while not scheduler.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/v1/chat/completions", json=_chat("hi"))
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        time.sleep(0.7)  # past the queued request's deadline
        release.set()
        waiting.join(timeout=30)
        assert results["queued"].status_code == 504 and "timed out" in results["queued"].json()["error"]["message"]
        assert client.post("/v1/chat/completions", json=_chat("hi")).status_code == 200  # and the server recovers


def test_a_client_that_disconnects_cancels_its_request(model: UniMedVL) -> None:
    with running_server(model, ServerSettings.tiny(max_new_tokens=1024)) as (url, app):
        scheduler = app.state.scheduler
        body = _chat("Describe this image in detail.", max_tokens=1024, min_tokens=1024, stream=True)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if '"content"' in line and '"role"' not in line:
                    break  # one token arrived: now hang up
        deadline = time.monotonic() + 5
        while scheduler.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.running == 0
        metrics = httpx.get(f"{url}/metrics").text
        generated = float(next(line.split()[1] for line in metrics.splitlines()
                               if line.startswith("unimedvl_generated_tokens_total")))
        assert generated < 1024  # stopped early, not decoded to the end


def test_logs_hold_no_image_bytes_or_question_text(api: TestClient, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Patient Johnathan Doe MRN 123456"
    image = data_url(SMALL_PNG, "image/png")
    api.post("/v1/chat/completions", json=_chat([_image(image), {"type": "text", "text": secret}]))
    api.post("/v1/chat/completions", json=_chat([_image("data:image/png;base64,%%"), {"type": "text", "text": secret}]))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/chat/completions 200" in text
    assert "Johnathan" not in text and image[30:80] not in text


def test_metrics_count_requests_and_tokens(api: TestClient) -> None:
    api.post("/v1/chat/completions", json=_chat("hello", max_tokens=3, min_tokens=3))
    text = api.get("/metrics").text
    assert 'unimedvl_requests_total{route="/v1/chat/completions",status="200"}' in text
    for name in ("unimedvl_queue_depth", "unimedvl_tokens_per_second", "unimedvl_images_per_second",
                 "unimedvl_request_seconds_bucket", "unimedvl_generated_tokens_total"):
        assert name in text


def test_two_apps_keep_their_own_state(model: UniMedVL) -> None:
    """No global state: two apps in one process have their own queues and metrics (replicas behind a balancer)."""
    with TestClient(create_app(model, ServerSettings.tiny())) as a, TestClient(create_app(model, ServerSettings.tiny())) as b:
        a.post("/v1/chat/completions", json=_chat("hello", max_tokens=2, min_tokens=2))
        assert a.app.state.scheduler is not b.app.state.scheduler
        assert "unimedvl_generated_tokens_total 2.0" in a.get("/metrics").text
        assert "unimedvl_generated_tokens_total 0.0" in b.get("/metrics").text


def test_preview_renders_dicom_with_the_reader(api: TestClient) -> None:
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    lung = api.post("/v1/preview", files={"image": ("ct.dcm", ct)}, data={"window": "lung"}).json()
    bone = api.post("/v1/preview", files={"image": ("ct.dcm", ct)}, data={"window": "bone"}).json()
    assert lung["format"] == "dicom" and lung["metadata"]["window"] == [-600.0, 1500.0]
    assert lung["image"] != bone["image"] and "PatientName" not in json.dumps(lung)
    picture = Image.open(io.BytesIO(base64.b64decode(lung["image"].split(",", 1)[1])))
    assert picture.size == (128, 128)


def test_conversations_keep_their_order_with_the_system_prompt_first() -> None:
    from unimedvl.serve.content import chat_input
    from unimedvl.serve.protocol import APIError, ChatCompletionRequest

    image = data_url(SMALL_PNG, "image/png")
    request = ChatCompletionRequest(messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "An X-ray."},
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": "Is it normal?"}])
    parsed = chat_input(request, ServerSettings.tiny())
    kinds = ["text" if isinstance(i, str) else "image" for i in parsed.items]
    assert kinds == ["text", "image", "text", "text", "text"]
    assert parsed.items[0] == "You are a radiologist." and parsed.items[-1] == "Is it normal?"
    assert parsed.last_user_text == "Is it normal?" and len(parsed.images) == 1
    with pytest.raises(APIError, match="user messages only"):
        chat_input(ChatCompletionRequest(messages=[{"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": image}}]}]), ServerSettings.tiny())


def test_an_understanding_only_server_answers_and_refuses_to_draw() -> None:
    understanding = UniMedVL.from_pretrained(default_checkpoint(), mode="understanding", quantize="int8")
    with TestClient(create_app(understanding, ServerSettings.tiny())) as client:
        info = client.get("/v1/models").json()["data"][0]["unimedvl"]
        assert info["load_mode"] == "understanding" and info["quantize"] == "int8" and info["generation"] is False
        reply = client.post("/v1/chat/completions", json=_chat("What imaging modality is this?"))
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        for response in (client.post("/v1/images/generations", json={"prompt": "A chest X-ray."}),
                         client.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("a.png", SMALL_PNG)}),
                         client.post("/v1/chat/completions", json=_chat("Draw one.", modalities=["image"]))):
            assert response.status_code == 400 and "understanding only" in response.json()["error"]["message"]
