"""Prometheus metrics of one app, in its own registry (no process-wide state: replicas and tests stay apart)."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RATE_WINDOW_S = 10.0


class _Rate:
    """Events per second over the last few seconds (thread-safe: the worker adds, the scrape reads)."""

    def __init__(self) -> None:
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), count))

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._events and self._events[0][0] < now - RATE_WINDOW_S:
                self._events.popleft()
            return sum(c for _, c in self._events) / RATE_WINDOW_S


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("unimedvl_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram("unimedvl_request_seconds", "Time to the last byte of a response", ["route"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.queue_depth = Gauge("unimedvl_queue_depth", "Requests waiting for the model", registry=r)
        self.running = Gauge("unimedvl_running_requests", "Text requests being decoded together", registry=r)
        self.tokens = Counter("unimedvl_generated_tokens", "Tokens generated", registry=r)
        self.images = Counter("unimedvl_generated_images", "Images generated or edited", registry=r)
        self.tokens_per_second = Gauge("unimedvl_tokens_per_second", f"Tokens per second over {RATE_WINDOW_S:.0f} s",
                                       registry=r)
        self.images_per_second = Gauge("unimedvl_images_per_second", f"Images per second over {RATE_WINDOW_S:.0f} s",
                                       registry=r)
        self._token_rate, self._image_rate = _Rate(), _Rate()
        self.tokens_per_second.set_function(self._token_rate.per_second)
        self.images_per_second.set_function(self._image_rate.per_second)

    def add_tokens(self, count: int) -> None:
        self.tokens.inc(count)
        self._token_rate.add(count)

    def add_images(self, count: int) -> None:
        self.images.inc(count)
        self._image_rate.add(count)

    def render(self, queue_depth: int, running: int) -> bytes:
        self.queue_depth.set(queue_depth)
        self.running.set(running)
        return generate_latest(self.registry)
