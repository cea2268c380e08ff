"""A real uvicorn server on a free loopback port, in a thread, for the API, client and browser tests."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from typing import Iterator

from PIL import Image

from unimedvl.inference.engine import UniMedVL
from unimedvl.serve.settings import ServerSettings


@contextlib.contextmanager
def running_server(model: UniMedVL, settings: ServerSettings) -> Iterator[tuple[str, object]]:
    """Yields (base URL, the app) while a uvicorn server runs the app in a thread."""
    import uvicorn

    from unimedvl.serve.app import create_app

    app = create_app(model, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))
