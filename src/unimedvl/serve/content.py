"""Chat messages -> the model's items (texts and images in order), through the one medical image reader.

Images arrive as data URLs: `data:image/png;base64,...`, `data:application/dicom;base64,...`,
`data:application/x-nifti;base64,...` (gzip-compressed NIfTI too). Remote URLs are refused: the
server never fetches from the network (hospitals run it offline). Reader options (window, slice,
axis) come per image (`image_options` on the part) or per request.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from PIL import Image

from unimedvl.errors import InputError
from unimedvl.imaging.intensity import parse_window
from unimedvl.imaging.reader import MedicalImage, ReadOptions, read_medical_image
from unimedvl.serve.protocol import APIError, ChatCompletionRequest, ReaderOptions
from unimedvl.serve.settings import ServerSettings

DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.ASCII)
FORMAT_HINTS = {"application/dicom": "dicom", "application/x-nifti": "nifti", "application/nifti": "nifti",
                "application/gzip": "nifti", "image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


@dataclass
class ChatInput:
    """What the model reads: texts and pictures in order; the system prompt leads."""

    items: list[str | Image.Image]
    images: list[MedicalImage]
    prompt_text: str  # every text joined (token counting, image prompts)
    last_user_text: str


def reader_options(options: ReaderOptions | None, param: str) -> ReadOptions:
    if options is None:
        return ReadOptions()
    try:
        window = options.window
        if isinstance(window, str):
            window = parse_window(window)
        elif window is not None:
            if len(window) != 2:
                raise ValueError("a window is a preset name or [center, width]")
            window = (float(window[0]), float(window[1]))
        return ReadOptions(window=window, slice_index=options.slice, axis=options.axis)
    except (ValueError, InputError) as exc:
        raise APIError(400, f"{param}: {exc}", param=param) from None


def decode_data_url(url: str, settings: ServerSettings, param: str) -> tuple[bytes, str | None]:
    """A data URL -> (bytes, format hint); 400 for anything else, 413 when too large."""
    if not url.startswith("data:"):
        raise APIError(400, "image_url must be a data: URL (base64); this server does not fetch images from the "
                       "network", param=param, code="unsupported_image_url")
    match = DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise APIError(400, "image_url must be a base64 data URL, e.g. data:image/png;base64,...", param=param)
    payload = url[match.end():]
    if len(payload) * 3 // 4 > settings.max_image_bytes:
        raise APIError(413, f"an image is larger than the {settings.max_image_bytes:,} bytes accepted", param=param,
                       code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "image_url holds invalid base64 data", param=param) from None
    return data, FORMAT_HINTS.get((match.group("type") or "").lower())


def read_image_bytes(data: bytes, hint: str | None, options: ReadOptions, settings: ServerSettings,
                     param: str, name: str = "") -> MedicalImage:
    try:
        return read_medical_image(data, options=options, format=hint, name=name or "image",
                                  max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
    except InputError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_image") from None


def chat_input(request: ChatCompletionRequest, settings: ServerSettings) -> ChatInput:
    """Every message in order: system and developer texts first, then the turns with their images."""
    default_options = reader_options(request.image_options, "image_options")
    ordered = sorted(enumerate(request.messages), key=lambda m: (m[1].role not in ("system", "developer"), m[0]))
    items: list[str | Image.Image] = []
    images: list[MedicalImage] = []
    texts: list[str] = []
    last_user = ""
    for index, message in ordered:
        content = message.content
        parts = [content] if isinstance(content, str) else (content or [])
        message_texts: list[str] = []
        for p, part in enumerate(parts):
            param = f"messages[{index}].content" + ("" if isinstance(content, str) else f"[{p}]")
            if isinstance(part, str):
                message_texts.append(part)
            elif part.type == "text":
                if part.text is None:
                    raise APIError(400, "a text part needs `text`", param=param)
                message_texts.append(part.text)
            else:
                if part.image_url is None:
                    raise APIError(400, "an image_url part needs `image_url.url`", param=param)
                if message.role != "user":
                    raise APIError(400, "images are read from user messages only", param=param)
                if len(images) >= settings.max_images:
                    raise APIError(400, f"at most {settings.max_images} images per request", param=param)
                data, hint = decode_data_url(part.image_url.url, settings, param)
                options = reader_options(part.image_options, f"{param}.image_options") if part.image_options \
                    else default_options
                scan = read_image_bytes(data, hint, options, settings, param)
                images.append(scan)
                items.append(scan.image)
        text = "\n".join(t for t in message_texts if t.strip())
        if text:
            items.append(text)
            texts.append(text)
            if message.role == "user":
                last_user = text
    if not texts:
        raise APIError(400, "the messages hold no text to answer", param="messages")
    return ChatInput(items, images, "\n".join(texts), last_user or texts[-1])
