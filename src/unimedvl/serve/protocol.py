"""The HTTP API's request bodies and its error shape (OpenAI's, so its clients read our errors).

Only fields we act on are declared; unknown fields are ignored as OpenAI's server does, except
that values we cannot honour (`n > 1` for chat, `response_format: url`, remote image URLs) are
refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with its HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                              413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error",
                              504: "timeout_error"}.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Open):
    url: str
    detail: Optional[str] = None


class ReaderOptions(_Open):
    """Extension: how to read a DICOM / NIfTI image (window preset or "center,width", slice or frame, axis)."""

    window: Optional[Union[str, list[float]]] = None
    slice: Optional[int] = None
    axis: int = 2


class ContentPart(_Open):
    type: Literal["text", "image_url"]
    text: Optional[str] = None
    image_url: Optional[ImageURL] = None
    image_options: Optional[ReaderOptions] = None  # extension, per image


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[ContentPart], None] = None


class ChatCompletionRequest(_Open):
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = 1
    modalities: Optional[list[Literal["text", "image"]]] = None
    # extensions
    min_tokens: int = 0
    think: bool = False
    image_options: Optional[ReaderOptions] = None  # for every image without its own
    size: Optional[str] = None  # image output ("modalities": ["image"])
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    image_guidance_scale: Optional[float] = None


class ImageGenerationRequest(_Open):
    prompt: str
    model: Optional[str] = None
    n: int = 1
    size: Optional[str] = None
    response_format: Optional[str] = "b64_json"
    seed: Optional[int] = None
    stream: bool = False  # extension: server-sent progress events, then the images
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    image_guidance_scale: Optional[float] = None
    timestep_shift: Optional[float] = None
    cache_interval: Optional[int] = None  # network every N steps, velocities extrapolated between


def parse_size(size: str | None, param: str = "size") -> tuple[int, int] | None:
    """`"128x96"` (width x height, OpenAI's order) -> (height, width); None for None or "auto"."""
    if size is None or size == "auto":
        return None
    parts = size.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise APIError(400, f"size must look like 128x128 (width x height), got {size!r}", param=param) from None
    return height, width
