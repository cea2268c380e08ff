"""The HTTP API and the web page over one loaded model: a plain ASGI app with no process-wide state.

    app = create_app(UniMedVL.from_pretrained(folder), ServerSettings(api_key="..."))

Routes (OpenAI's shapes, so its clients work unchanged; extensions are marked):

    POST /v1/chat/completions     messages with data-URL images (PNG, JPEG, DICOM, NIfTI), stream (SSE),
                                  "modalities": ["image"] (understand, then generate)
    POST /v1/images/generations   JSON; b64_json; stream (extension: progress events)
    POST /v1/images/edits         multipart; b64_json; stream (extension)
    POST /v1/preview              extension: the reader's rendering of an upload (the page's preview)
    GET  /v1/models, /health, /metrics (Prometheus), / (the page)

Everything the model does runs on one worker thread (`scheduler.py`); handlers only parse, check
limits, queue and stream. Errors are `{"error": {...}}` with a 4xx status for bad input; logs
hold the method, route, status and duration only, never bodies.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import io
import json
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from unimedvl.assets import WEB
from unimedvl.errors import UnimedvlError
from unimedvl.inference.engine import TextOptions, UniMedVL, check_generation_size
from unimedvl.model.sampling import GUIDANCE_KINDS, GuidanceOptions
from unimedvl.serve.content import chat_input, read_image_bytes, reader_options
from unimedvl.serve.metrics import Metrics
from unimedvl.serve.protocol import APIError, ChatCompletionRequest, ImageGenerationRequest, ReaderOptions, parse_size
from unimedvl.serve.scheduler import Job, Scheduler
from unimedvl.serve.settings import ServerSettings

log = logging.getLogger("unimedvl.serve")
PUBLIC_PATHS = frozenset({"/health", "/", "/static/app.js", "/favicon.ico"})  # no data, no model work
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class BodyLimit:
    """Refuse request bodies above the limit, declared (Content-Length) or streamed, before they are buffered."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = APIError(413, f"the request body is larger than the {self.max_bytes:,} bytes accepted",
                             code="request_too_large")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await JSONResponse(too_large.body(), status_code=413)(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the HTTP layer holds the client to its declared length
            return
        # A streamed (chunked) body: read it up to the limit here, then hand it on whole.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await JSONResponse(too_large.body(), status_code=413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _png_b64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def create_app(model: UniMedVL, settings: ServerSettings | None = None) -> FastAPI:
    """The app for one loaded model (full mode for images; understanding mode serves text only)."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    scheduler = Scheduler(model, max_running=settings.max_running, max_queue=settings.max_queue,
                          on_tokens=metrics.add_tokens, on_images=metrics.add_images)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="unimedvl", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler, app.state.metrics, app.state.settings = scheduler, metrics, settings

    # ------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return JSONResponse(APIError(400, message, param=where or None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse(APIError(500, "internal error").body(), status_code=500)

    # ------------------------------------------------------------ auth, metrics, logs
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        path = request.url.path
        route = path if path.startswith("/v1/") or path in PUBLIC_PATHS or path == "/metrics" else "other"
        if settings.api_key is not None and path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                response: Response = JSONResponse(APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                                           code="invalid_api_key").body(), status_code=401)
                metrics.requests.labels(route, "401").inc()
                return response
        response = await call_next(request)
        elapsed = time.perf_counter() - start
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(elapsed)
        log.info("%s %s %d %.3fs", request.method, route, response.status_code, elapsed)
        return response

    # ------------------------------------------------------------ helpers
    def pre_resized(image: Any) -> Any:
        resized = model.vqa_vit_rule(image)
        rule = model.vqa_vit_rule
        return resized if rule.target_size(*resized.size) == resized.size else image  # only when it is a fixed point

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_name:
            raise APIError(404, f"model {name!r} is not served here; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")

    def new_job(kind: str, **fields: Any) -> Job:
        loop = asyncio.get_running_loop()
        return Job(kind, loop, asyncio.Queue(), time.monotonic() + settings.request_timeout_s, **fields)

    async def result_of(job: Job, request: Request) -> dict[str, Any]:
        """Wait for a job's end; a client that goes away cancels it."""
        scheduler.submit(job, settings.retry_after_s)
        while True:
            try:
                kind, payload = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise APIError(499, "client closed the request") from None
                if time.monotonic() > job.deadline + 5:
                    job.cancel()
                    raise APIError(504, "the request timed out") from None
                continue
            if kind == "error":
                raise payload
            if kind == "done":
                return payload

    async def stream_events(job: Job, render: Any) -> AsyncIterator[bytes]:
        """SSE from a job's events; `render(kind, payload)` gives the chunks. Cancelled when the client leaves."""
        try:
            while True:
                kind, payload = await job.events.get()
                if kind == "error":
                    yield _sse(payload.body())
                    break
                for chunk in render(kind, payload):
                    yield chunk
                if kind == "done":
                    break
            yield _sse("[DONE]")
        finally:
            job.cancel()  # a no-op after "done"; stops the worker's work when the client disconnected

    def text_options(body: ChatCompletionRequest) -> TextOptions:
        max_tokens = next((v for v in (body.max_completion_tokens, body.max_tokens) if v is not None),
                          min(512, settings.max_new_tokens))
        if max_tokens > settings.max_new_tokens or max_tokens < 1:
            raise APIError(400, f"max_tokens must be in [1, {settings.max_new_tokens}], got {max_tokens}",
                           param="max_tokens")
        for name in ("temperature", "top_p"):
            value = getattr(body, name)
            if value is not None and not math.isfinite(value):
                raise APIError(400, f"{name} must be a finite number", param=name)
        sample = body.temperature is not None and body.temperature > 0
        try:
            return TextOptions(max_new_tokens=max_tokens, do_sample=sample,
                               temperature=body.temperature if sample else 1.0,
                               top_p=1.0 if body.top_p is None else body.top_p,
                               min_new_tokens=min(body.min_tokens, max_tokens))
        except UnimedvlError as exc:
            raise APIError(400, str(exc)) from None

    def guidance(kind: str, steps: int | None, text_scale: float | None, image_scale: float | None,
                 shift: float | None = None, cache_interval: int | None = None) -> GuidanceOptions:
        if steps is not None and not 2 <= steps <= settings.max_steps:
            raise APIError(400, f"num_inference_steps must be in [2, {settings.max_steps}], got {steps}",
                           param="num_inference_steps")
        overrides = {k: v for k, v in (("num_timesteps", steps), ("text_scale", text_scale),
                                       ("image_scale", image_scale), ("timestep_shift", shift),
                                       ("cache_interval", cache_interval)) if v is not None}
        call = "editing" if kind == "edit" else "text_to_image"  # on top of the checkpoint's recommendation
        try:
            options = model.guidance(call, **overrides)
        except UnimedvlError as exc:
            raise APIError(400, str(exc)) from None
        if options.num_timesteps > settings.max_steps:  # a recommendation above the server's cap
            options = dataclasses.replace(options, num_timesteps=settings.max_steps)
        return options

    def output_size(size: str | None) -> tuple[int | None, int | None]:
        parsed = parse_size(size)
        if parsed is None:
            return None, None
        try:
            check_generation_size(model.config, *parsed)
        except UnimedvlError as exc:
            raise APIError(400, f"size: {exc}", param="size") from None
        trained = model.image_config.generation_sizes
        if trained and model.image_config.untrained_sides(*parsed):
            # The CLI warns; an API caller cannot see a warning, so a size the model never drew is refused.
            sides = " and ".join(str(s) for s in trained)
            raise APIError(400, f"size {size}: this model was trained to draw {sides} px sides only", param="size")
        return parsed

    def check_image_request(n: int, response_format: str | None) -> None:
        if not 1 <= n <= settings.max_images_out:
            raise APIError(400, f"n must be in [1, {settings.max_images_out}], got {n}", param="n")
        if response_format not in (None, "b64_json"):
            raise APIError(400, "only response_format b64_json is supported (this server keeps no image URLs)",
                           param="response_format")
        if model.load_mode == "understanding" or model.vae is None:
            raise APIError(400, "this server's model was loaded for understanding only; it cannot draw images",
                           code="unsupported")

    def image_run(kind: str, prompt: str, n: int, seed: int | None, height: int | None, width: int | None,
                  options: GuidanceOptions, source: Any = None, text_first: list[Any] | None = None) -> Any:
        def run(job: Job) -> dict[str, Any]:
            data, text = [], None
            if text_first is not None:  # chat with "modalities": ["text", "image"]: answer, then draw
                text = model.generate_text(model.chat_context(text_first), TextOptions(max_new_tokens=256)).text
            instruction = prompt if not text else f"{prompt}\n\n{text}"
            for i in range(n):
                def progress(step: int, total: int, index: int = i) -> None:
                    job.check()
                    job.emit("progress", {"image": index, "step": step, "total": total})

                image_seed = None if seed is None else seed + i
                if source is None:
                    image = model.generate(instruction, height=height, width=width, guidance=options, seed=image_seed,
                                           progress=progress)
                else:
                    image = model.edit(source, instruction, guidance=options, seed=image_seed, height=height,
                                       width=width, progress=progress)
                data.append({"b64_json": _png_b64(image), "width": image.width, "height": image.height})
            return {"images": n, "data": data, "text": text}
        return run

    async def read_upload(form: Any, what: str) -> Any:
        """The form's `image` file through the reader, with its `window` / `slice` / `axis` fields."""
        upload = form.get("image") or form.get("image[]")
        if upload is None or isinstance(upload, str):
            raise APIError(400, f"{what} needs an `image` file", param="image")
        try:
            reading = ReaderOptions(**{k: v for k, v in form.items()
                                       if isinstance(v, str) and k in ("window", "slice", "axis")})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        data = await upload.read()
        if len(data) > settings.max_image_bytes:
            raise APIError(413, f"the image is larger than the {settings.max_image_bytes:,} bytes accepted",
                           param="image", code="image_too_large")
        return await run_in_threadpool(read_image_bytes, data, None, reader_options(reading, "image"), settings,
                                       "image", upload.filename or "")

    async def images_response(job: Job, request: Request, stream: bool) -> Response:
        if not stream:
            result = await result_of(job, request)
            return JSONResponse({"created": int(time.time()), "data": result["data"]})
        scheduler.submit(job, settings.retry_after_s)

        def render(kind: str, payload: Any) -> list[bytes]:
            if kind == "progress":
                return [_sse({"type": "image_generation.progress", **payload})]
            return [_sse({"type": "image_generation.completed", "created": int(time.time()), **item})
                    for item in payload["data"]]
        return StreamingResponse(stream_events(job, render), media_type="text/event-stream")

    # ------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> JSONResponse:
        alive = scheduler._thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "worker stopped"}, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(scheduler.waiting, scheduler.running), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        sizes = model.image_config
        return JSONResponse({"object": "list", "data": [{
            "id": settings.model_name, "object": "model", "created": 0, "owned_by": "unimedvl",
            "unimedvl": {"load_mode": model.load_mode, "quantize": model.quantize,
                         "generation": model.load_mode == "full" and model.vae is not None,
                         "trained_sizes": list(sizes.generation_sizes or ()), "default_size": sizes.default_size,
                         "think": model.think_trained is not False,
                         # what an image request samples with for each field it leaves out
                         "guidance": {kind: model.guidance(kind).to_json_dict() for kind in GUIDANCE_KINDS},
                         "limits": {"max_new_tokens": settings.max_new_tokens, "max_steps": settings.max_steps,
                                    "max_images": settings.max_images, "max_image_bytes": settings.max_image_bytes}}}]})

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model)
        if body.n != 1:
            raise APIError(400, "n must be 1 for chat completions", param="n")
        options = text_options(body)
        parsed = await run_in_threadpool(chat_input, body, settings)
        prompt_tokens = sum(len(model.tokenizer.encode(t)) for t in parsed.items if isinstance(t, str))
        if prompt_tokens > settings.max_prompt_tokens:
            raise APIError(400, f"the messages hold {prompt_tokens:,} tokens; at most {settings.max_prompt_tokens:,} "
                           "are accepted", param="messages", code="context_length_exceeded")
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.modalities and "image" in body.modalities:
            check_image_request(1, None)
            height, width = output_size(body.size)
            pictures = [s.image for s in parsed.images]
            kind = "edit" if pictures else "generate"
            run = image_run(kind, parsed.last_user_text, 1, body.seed, height, width,
                            guidance(kind, body.num_inference_steps, body.guidance_scale, body.image_guidance_scale),
                            source=pictures[-1] if pictures else None,
                            text_first=parsed.items if "text" in body.modalities else None)
            result = await result_of(new_job("image", run=run), request)
            content: list[dict[str, Any]] = []
            if result.get("text"):
                content.append({"type": "text", "text": result["text"]})
            content += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{d['b64_json']}"}}
                        for d in result["data"]]
            return JSONResponse({"id": request_id, "object": "chat.completion", "created": created,
                                 "model": settings.model_name, "choices": [{
                                     "index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}]})
        # The understanding resize runs here, in the request's thread, overlapping the worker's decoding
        # (the worker's own resize of an image already at its size is a copy: the outputs are unchanged).
        items = await run_in_threadpool(lambda: [i if isinstance(i, str) else pre_resized(i) for i in parsed.items])
        job = new_job("text", items=items, think=body.think, options=options, seed=body.seed, stream=body.stream)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return _sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                         "model": settings.model_name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        def usage(result: dict[str, Any]) -> dict[str, int]:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": result["tokens"],
                    "total_tokens": prompt_tokens + result["tokens"]}

        if body.stream:
            scheduler.submit(job, settings.retry_after_s)
            first = [True]

            def render(kind: str, payload: Any) -> list[bytes]:
                out = []
                if first[0]:
                    out.append(chunk({"role": "assistant", "content": ""}))
                    first[0] = False
                if kind == "delta":
                    out.append(chunk({"content": payload}))
                elif kind == "done":
                    if payload["delta_tail"]:
                        out.append(chunk({"content": payload["delta_tail"]}))
                    out.append(chunk({}, "stop" if payload["finished"] else "length", usage=usage(payload)))
                return out
            return StreamingResponse(stream_events(job, render), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await result_of(job, request)
        message: dict[str, Any] = {"role": "assistant", "content": result["text"]}
        if result["thinking"] is not None:
            message["reasoning_content"] = result["thinking"]
        return JSONResponse({"id": request_id, "object": "chat.completion", "created": created,
                             "model": settings.model_name,
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "stop" if result["finished"] else "length"}],
                             "usage": usage(result)})

    @app.post("/v1/images/generations")
    async def generations(body: ImageGenerationRequest, request: Request) -> Response:
        check_model(body.model)
        check_image_request(body.n, body.response_format)
        if not body.prompt.strip():
            raise APIError(400, "prompt is empty", param="prompt")
        height, width = output_size(body.size)
        if height is None:
            height = width = model.image_config.default_size
        options = guidance("generate", body.num_inference_steps, body.guidance_scale, body.image_guidance_scale,
                           body.timestep_shift, body.cache_interval)
        run = image_run("generate", body.prompt, body.n, body.seed, height, width, options)
        return await images_response(new_job("image", run=run), request, body.stream)

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> Response:
        form = await request.form(max_files=2, max_fields=32)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            body = ImageGenerationRequest(**{k: v for k, v in fields.items() if k in ImageGenerationRequest.model_fields})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        check_model(body.model)
        check_image_request(body.n, body.response_format)
        if not body.prompt.strip():
            raise APIError(400, "prompt is empty", param="prompt")
        scan = await read_upload(form, "an edit")
        height, width = output_size(body.size)
        options = guidance("edit", body.num_inference_steps, body.guidance_scale, body.image_guidance_scale,
                           body.timestep_shift, body.cache_interval)
        run = image_run("edit", body.prompt, body.n, body.seed, height, width, options, source=scan.image)
        return await images_response(new_job("image", run=run), request, body.stream)

    @app.post("/v1/preview")
    async def preview(request: Request) -> JSONResponse:
        """Extension: how the reader renders an upload (DICOM / NIfTI with window and slice), for the page."""
        scan = await read_upload(await request.form(max_files=1, max_fields=8), "a preview")
        return JSONResponse({"image": f"data:image/png;base64,{_png_b64(scan.image)}", "format": scan.format,
                             "modality": scan.modality, "metadata": scan.metadata})

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse((WEB / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @app.get("/static/app.js")
    async def script() -> Response:
        return Response((WEB / "app.js").read_text(encoding="utf-8"), media_type="text/javascript",
                        headers={"X-Content-Type-Options": "nosniff"})

    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app
