"""Who answers: the loaded engine, or any OpenAI-compatible chat endpoint (so other models are scored
with the same loaders, prompts and scorers).

A predictor takes a batch of (image, prompt) requests and returns one text per request, in order.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from unimedvl.errors import InputError


@dataclass(frozen=True)
class Request:
    image: Image.Image
    prompt: str
    max_new_tokens: int = 64


class Predictor(Protocol):
    name: str

    def predict(self, requests: list[Request]) -> list[str]: ...


class EnginePredictor:
    """A `UniMedVL` engine, greedy decoding (one loaded model for the whole run)."""

    def __init__(self, engine, name: str) -> None:  # noqa: ANN001 - a UniMedVL
        self.engine, self.name = engine, name

    def predict(self, requests: list[Request]) -> list[str]:
        return [self.engine.ask([r.image], r.prompt, max_new_tokens=r.max_new_tokens).text for r in requests]


def parse_endpoint(spec: str) -> tuple[str, str]:
    """`URL#MODEL` -> (base URL ending in /v1 or similar, model name)."""
    url, _, model = spec.partition("#")
    if not url.startswith(("http://", "https://")) or not model:
        raise InputError(f"--endpoint must look like http://host:port/v1#model-name, got {spec!r}")
    return url.rstrip("/"), model


class EndpointPredictor:
    """`POST {url}/chat/completions` with the image as a PNG data URL, temperature 0.

    A request that fails is retried (`retries` times, with a pause); then the run stops with one
    error line; finished items are already on disk, so a rerun resumes.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 2) -> None:
        self.url, self.model, self.api_key, self.timeout, self.retries = url, model, api_key, timeout, retries
        self.name = f"endpoint:{model}"

    def _body(self, request: Request) -> bytes:
        buffer = io.BytesIO()
        request.image.save(buffer, format="PNG")
        data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return json.dumps({"model": self.model, "temperature": 0, "max_tokens": request.max_new_tokens,
                           "messages": [{"role": "user", "content": [
                               {"type": "image_url", "image_url": {"url": data_url}},
                               {"type": "text", "text": request.prompt}]}]}).encode()

    def _one(self, request: Request) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            try:
                call = urllib.request.Request(f"{self.url}/chat/completions", data=self._body(request), headers=headers)
                with urllib.request.urlopen(call, timeout=self.timeout) as response:
                    content = json.loads(response.read())["choices"][0]["message"]["content"]
                return content if isinstance(content, str) else ""
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError) as exc:
                last = str(exc)
                time.sleep(min(2.0 * (attempt + 1), 10.0))
        raise InputError(f"endpoint {self.url} ({self.model}) failed after {self.retries + 1} tries: {last}")

    def predict(self, requests: list[Request]) -> list[str]:
        return [self._one(r) for r in requests]
