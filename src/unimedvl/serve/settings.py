"""What one server accepts and how it queues: every limit in one typed config (`tiny()` for tests)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from unimedvl.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    """Limits are checked before any model work; exceeding one is a 4xx error in the OpenAI error shape."""

    api_key: str | None = None  # every route but /health (and the page's static shell) needs it when set
    model_name: str = "unimedvl-tiny"
    max_request_bytes: int = 64 * 1024 * 1024  # a whole HTTP body
    max_image_bytes: int = 48 * 1024 * 1024  # one decoded image (a DICOM or NIfTI file included)
    max_image_pixels: int = 20_000_000  # one decoded picture or slice
    max_images: int = 8  # per request
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    max_steps: int = 100  # denoising steps of one image
    max_images_out: int = 4  # `n` of one images request
    max_running: int = 16  # text requests decoded together (one batch)
    max_queue: int = 64  # waiting requests; beyond this: 429 with Retry-After
    request_timeout_s: float = 300.0
    retry_after_s: int = 2

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_image_bytes", "max_image_pixels", "max_images", "max_prompt_tokens",
                     "max_new_tokens", "max_steps", "max_images_out", "max_running", "max_queue", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"server setting {name} must be a positive integer, got {value!r}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("an API key must have at least 8 characters")

    @classmethod
    def tiny(cls, **overrides: object) -> "ServerSettings":
        """Small limits for tests: a short queue and timeout, small bodies."""
        return replace(cls(max_request_bytes=4 * 1024 * 1024, max_image_bytes=2 * 1024 * 1024, max_queue=8,
                           max_running=4, request_timeout_s=60.0, max_new_tokens=64, max_steps=20), **overrides)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, allow_remote: bool) -> None:
    """Without a key the server listens on loopback only, unless the operator says otherwise."""
    if not is_loopback(host) and api_key is None and not allow_remote:
        raise ConfigError(f"refusing to listen on {host} without --api-key (anyone who can reach it could use the "
                          "model); give --api-key KEY, or --allow-remote to do it anyway")
