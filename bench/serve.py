"""Load test of `unimedvl serve`: N concurrent clients against the same requests sent one at a time.

    .venv/bin/python bench/serve.py [--clients 16] [--seconds 60] [--tokens 64] [--checkpoint DIR] [--json out.json]

The server runs in its own process (`unimedvl serve` on a free loopback port), so its memory is its
own: RSS is sampled every second. Each request is a chat completion about a real chest X-ray (a data
URL) with `max_tokens` = `min_tokens` = --tokens (decode-heavy, as vLLM's throughput benchmarks use
`ignore_eos`). Phases, on one server in one run:
1. one client, requests one at a time (the baseline), --seconds / 4;
2. --clients clients for --seconds (the load test: batched decoding);
3. the baseline again, --seconds / 4 (the baseline reported is the mean of 1 and 3);
4. a burst of 3 x --clients clients against a queue of --clients for 10 s: deliberate 429s with Retry-After.
Reports requests/s, tokens/s, p50/p99 latency, errors by status and memory, and the batching gain
(phase 2 tokens/s over the baseline's). A benchmark, not a test: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from unimedvl.assets import SAMPLES

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), rss_mib(self.pid)))
            self.stop.wait(1.0)


QUESTIONS = ["Describe the findings in this chest X-ray.", "Is there pneumonia?", "What imaging modality is this?",
             "Write a short report for this image."]


def request_body(tokens: int, index: int) -> dict:
    image = base64.b64encode((SAMPLES / "chest_xray_nih.png").read_bytes()).decode()
    return {"model": "unimedvl-tiny", "max_tokens": tokens, "min_tokens": tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
        {"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]}]}]}


def encoded_bodies(tokens: int) -> list[bytes]:
    """Every distinct request body, JSON-encoded once (the load generator should not compete with the server)."""
    return [json.dumps(request_body(tokens, i)).encode() for i in range(len(QUESTIONS))]


def run_phase(url: str, clients: int, seconds: float, tokens: int) -> dict:
    """`clients` threads, each sending requests back to back until the time is up."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    generated = [0]
    lock = threading.Lock()
    start = time.monotonic()
    end = start + seconds
    bodies = encoded_bodies(tokens)

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            i = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    response = http.post("/v1/chat/completions", content=bodies[(k + i) % len(bodies)],
                                         headers={"Content-Type": "application/json"})
                    status = str(response.status_code)
                    count = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
                    if response.status_code == 429:
                        status += " (Retry-After %s)" % response.headers.get("retry-after")
                        time.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.HTTPError as exc:
                    status, count = type(exc).__name__, 0
                with lock:
                    statuses[status] += 1
                    if count:
                        latencies.append(time.monotonic() - t0)
                        generated[0] += count
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    ok = len(latencies)
    ordered = sorted(latencies)
    return {"clients": clients, "seconds": round(elapsed, 1), "requests_ok": ok,
            "requests_per_s": ok / elapsed, "tokens_per_s": generated[0] / elapsed,
            "p50_s": statistics.median(ordered) if ordered else float("nan"),
            "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
            "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "unimedvl", "serve", "--port", str(port), "--max-running", str(args.clients),
               "--max-queue", str(args.clients)]
    if args.checkpoint:
        command += ["--checkpoint", str(args.checkpoint)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        run_phase(url, 1, 3, args.tokens)  # warm-up of both paths (compiled kernels, allocator, caches)
        run_phase(url, args.clients, 3, args.tokens)
        run_phase(url, 1, 2, args.tokens)
        sampler = MemorySampler(server.pid)
        sampler.start()
        phases = {}
        marks = {}
        for name, clients, seconds in (("one at a time (before)", 1, args.seconds / 4),
                                       (f"{args.clients} clients", args.clients, args.seconds),
                                       ("one at a time (after)", 1, args.seconds / 4),
                                       (f"burst: {3 * args.clients} clients, queue {args.clients}", 3 * args.clients, 10)):
            marks[name] = (time.monotonic(), None)
            phases[name] = run_phase(url, clients, seconds, args.tokens)
            marks[name] = (marks[name][0], time.monotonic())
            print(f"{name}: {phases[name]['tokens_per_s']:.0f} tok/s, {phases[name]['statuses']}", file=sys.stderr)
        sampler.stop.set()
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=30)

    def memory(name: str) -> tuple[float, float, float]:
        t0, t1 = marks[name]
        values = [m for t, m in sampler.samples if t0 <= t <= t1]
        return (values[0], max(values), values[-1]) if values else (float("nan"),) * 3

    load = f"{args.clients} clients"
    baseline = statistics.mean(phases[n]["tokens_per_s"] for n in phases if n.startswith("one at a time"))
    gain = phases[load]["tokens_per_s"] / baseline
    print(f"\nserve load test: UniMedVL-tiny, {args.tokens} tokens per answer, server in its own process\n")
    print("| phase | clients | s | requests/s | tokens/s | p50 s | p99 s | responses | RSS MiB start / max / end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in phases.items():
        start, peak, end = memory(name)
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items()))
        print(f"| {name} | {row['clients']} | {row['seconds']} | {row['requests_per_s']:.2f} | {row['tokens_per_s']:.0f} "
              f"| {row['p50_s']:.3f} | {row['p99_s']:.3f} | {statuses} | {start:.0f} / {peak:.0f} / {end:.0f} |")
    errors = {k: v for name, row in phases.items() for k, v in row["statuses"].items()
              if k != "200" and not k.startswith("429")}
    print(f"\nbatched decoding gain: {gain:.2f}x the one-at-a-time tokens/s ({phases[load]['tokens_per_s']:.0f} vs "
          f"{baseline:.0f}); errors other than 429: {sum(errors.values())} {errors or ''}")
    start, peak, end = memory(load)
    print(f"memory during the {args.seconds:.0f} s load: {start:.0f} -> {end:.0f} MiB (max {peak:.0f})")
    if args.json:
        args.json.write_text(json.dumps({"phases": phases, "gain": gain, "memory_samples": sampler.samples,
                                         "errors": errors}, indent=1))


if __name__ == "__main__":
    main()
