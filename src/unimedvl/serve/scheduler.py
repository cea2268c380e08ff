"""One worker thread owns the loaded model: text requests decode together, image requests take turns.

Text jobs are prefilled one by one as they are admitted, then every running job advances one
token per step through `UniMedVL.decode_together` (one forward for all of them, up to
`max_running`). Image jobs (generation, editing, chat with `"modalities": ["image"]`) run whole,
between decoding steps, when no text is running or when the oldest has waited `image_wait_s`.
The queue is bounded (a full queue is answered 429 by the app); a job whose client went away or
whose deadline passed is dropped at the next step. Events reach the request's asyncio queue
through `loop.call_soon_threadsafe`, so the HTTP side never blocks on the model.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from unimedvl.errors import UnimedvlError
from unimedvl.inference.engine import DecodeState, TextOptions, UniMedVL
from unimedvl.serve.protocol import APIError


class _Stopped(Exception):
    """Raised inside an image job's progress callback when its client left or its deadline passed."""


@dataclass
class Job:
    """One request on its way through the worker. `run` (image jobs) does the whole work."""

    kind: str  # "text" or "image"
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    deadline: float
    items: list[Any] = field(default_factory=list)  # text jobs: the chat items
    think: bool = False
    options: TextOptions | None = None
    seed: int | None = None
    run: Callable[["Job"], dict[str, Any]] | None = None  # image jobs
    stream: bool = False  # send text deltas as they are decoded (otherwise only the end)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: DecodeState | None = None
    sent_text: str = ""
    tokens: int = 0

    def emit(self, kind: str, payload: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop closed (server shutting down): nobody is listening
            pass

    def cancel(self) -> None:
        self.cancelled.set()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def check(self) -> None:
        if self.cancelled.is_set() or self.expired():
            raise _Stopped


class Scheduler:
    """The model's only user. `submit` is called from the event loop; everything else runs in the thread."""

    def __init__(self, model: UniMedVL, *, max_running: int, max_queue: int, image_wait_s: float = 2.0,
                 on_tokens: Callable[[int], None] | None = None, on_images: Callable[[int], None] | None = None
                 ) -> None:
        self.model = model
        self.max_running, self.max_queue, self.image_wait_s = max_running, max_queue, image_wait_s
        self.on_tokens, self.on_images = on_tokens, on_images
        self._text: collections.deque[Job] = collections.deque()
        self._image: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self.largest_batch = 0  # the most text requests one forward has decoded (read by the tests)
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="unimedvl-model", daemon=True)

    # ------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=30)

    @property
    def waiting(self) -> int:
        return len(self._text) + len(self._image)

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(self, job: Job, retry_after_s: int) -> None:
        with self._wake:
            if self._stop:
                raise APIError(503, "the server is shutting down")
            if self.waiting >= self.max_queue:
                raise APIError(429, f"the queue is full ({self.max_queue} requests waiting); retry later",
                               code="queue_full", headers={"Retry-After": str(retry_after_s)})
            (self._text if job.kind == "text" else self._image).append(job)
            self._wake.notify()

    # ------------------------------------------------------------ worker side
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._text and not self._image and not self._running:
                    self._wake.wait()
                if self._stop:
                    for job in [*self._text, *self._image, *self._running]:
                        job.emit("error", APIError(503, "the server is shutting down"))
                    return
            try:
                self._admit()
                image_job = self._next_image_job()
                if image_job is not None:
                    self._run_image(image_job)
                if self._running:
                    self._step()
            except Exception as exc:  # noqa: BLE001  (a bug must not kill the worker: fail the jobs it touched)
                for job in self._running:
                    job.emit("error", APIError(500, f"internal error ({type(exc).__name__})"))
                self._running.clear()

    def _pop(self, queue: collections.deque[Job]) -> Job | None:
        with self._wake:
            return queue.popleft() if queue else None

    def _admit(self) -> None:
        while len(self._running) < self.max_running:
            job = self._pop(self._text)
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            if job.expired():
                job.emit("error", APIError(504, "the request timed out while waiting in the queue"))
                continue
            try:
                context = self.model.chat_context(job.items, think=job.think)
                generator = None if job.seed is None else torch.Generator().manual_seed(job.seed)
                job.state = self.model.start_decoding(context, job.options, generator=generator)
            except UnimedvlError as exc:
                job.emit("error", APIError(400, str(exc)))
                continue
            self._running.append(job)

    def _next_image_job(self) -> Job | None:
        with self._wake:
            if not self._image:
                return None
            if self._running and time.monotonic() - self._image[0].enqueued < self.image_wait_s:
                return None
            return self._image.popleft()

    def _run_image(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        if job.expired():
            job.emit("error", APIError(504, "the request timed out while waiting in the queue"))
            return
        assert job.run is not None
        try:
            result = job.run(job)
        except _Stopped:
            if not job.cancelled.is_set():
                job.emit("error", APIError(504, "the request timed out"))
            return
        except APIError as exc:
            job.emit("error", exc)
            return
        except UnimedvlError as exc:
            job.emit("error", APIError(400, str(exc)))
            return
        if self.on_images is not None:
            self.on_images(int(result.get("images", 0)))
        job.emit("done", result)

    def _step(self) -> None:
        for job in list(self._running):
            if job.cancelled.is_set():
                self._running.remove(job)
            elif job.expired():
                job.emit("error", APIError(504, "the request timed out"))
                self._running.remove(job)
        if not self._running:
            return
        self.largest_batch = max(self.largest_batch, len(self._running))
        self.model.decode_together([job.state for job in self._running])  # type: ignore[misc]
        if self.on_tokens is not None:
            self.on_tokens(len(self._running))
        for job in list(self._running):
            state = job.state
            assert state is not None
            job.tokens = len(state.ids)
            if job.stream:
                text = self.model.tokenizer.decode(state.ids)
                # Hold back a partial UTF-8 character (decoded as U+FFFD) until its last byte arrives.
                if not state.done and text.endswith("\ufffd"):
                    continue
                if text != job.sent_text and text.startswith(job.sent_text):
                    job.emit("delta", text[len(job.sent_text):])
                    job.sent_text = text
            if state.done:
                answer = self.model.answer(state)
                job.emit("done", {"text": answer.text, "finished": answer.finished, "tokens": len(answer.token_ids),
                                  "thinking": answer.thinking, "delta_tail": answer.text[len(job.sent_text):]})
                self._running.remove(job)
