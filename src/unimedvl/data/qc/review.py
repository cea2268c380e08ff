"""Stage 3: expert validation - a stratified review sample, a local review page, and agreement.

* `export_review_sample` picks up to N samples per (modality, task) stratum from the built corpus
  (deterministic under the seed) into `qc/stage3/` (JSONL plus the images as stored).
* `serve_review` runs a small local web page (standard library HTTP server, bound to 127.0.0.1)
  where clinicians accept or reject each sample with a comment; verdicts go to SQLite
  (`qc/stage3/reviews.sqlite`).
* `agreement_report` computes Cohen's kappa for every pair of reviewers and Fleiss' kappa over the
  samples rated by the same number of reviewers, and writes `qc/stage3/report.md` / `.json`.
"""

from __future__ import annotations

import hashlib
import html
import json
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import combinations
from pathlib import Path
from typing import Any

from unimedvl.utils.files import atomic_write_bytes, atomic_write_text

VERDICTS = ("accept", "reject")


def stage3_dir(corpus: Path) -> Path:
    return Path(corpus) / "qc" / "stage3"


def export_review_sample(corpus: Path, per_stratum: int, seed: int = 0) -> int:
    from unimedvl.data.storage import iter_samples

    strata: dict[tuple[str, str], list[tuple[str, Any]]] = defaultdict(list)
    data = Path(corpus) / "data"
    if not data.exists():
        return 0
    for sample in iter_samples(corpus):
        rank = hashlib.sha256(f"{seed}\x1f{sample.id}".encode()).hexdigest()
        bucket = strata[(sample.modality, sample.task)]
        bucket.append((rank, sample))
        bucket.sort(key=lambda x: x[0])
        del bucket[per_stratum:]  # keeps memory bounded by strata x per_stratum
    out = stage3_dir(corpus)
    lines = []
    for (modality, task), chosen in sorted(strata.items()):
        for _, sample in chosen:
            images = []
            for k, ref in enumerate(sample.images()):
                name = f"{sample.id}_{k}.{ref.format or 'bin'}"
                atomic_write_bytes(out / "images" / name, ref.data)
                images.append(name)
            lines.append(json.dumps({"id": sample.id, "modality": modality, "task": task, "split": sample.split,
                                     "source": sample.source, "template_made": sample.template_made,
                                     "items": [{"role": it.role, "text": it.text} if it.kind == "text" else
                                               {"role": it.role, "image": images.pop(0) if images else None}
                                               for it in sample.items]}, sort_keys=True))
    atomic_write_text(out / "review_sample.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


class ReviewStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS reviews (sample_id TEXT, reviewer TEXT, verdict TEXT, comment TEXT, "
                       "updated REAL, PRIMARY KEY (sample_id, reviewer))")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def record(self, sample_id: str, reviewer: str, verdict: str, comment: str = "") -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")
        if not reviewer.strip():
            raise ValueError("reviewer name is empty")
        with self._lock, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
                       (sample_id, reviewer.strip(), verdict, comment, time.time()))

    def all(self) -> list[tuple[str, str, str, str]]:
        with self._connect() as db:
            return db.execute("SELECT sample_id, reviewer, verdict, comment FROM reviews ORDER BY sample_id, reviewer").fetchall()


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two raters over the same items."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("two equal, non-empty label lists are needed")
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if expected == 1.0 else (observed - expected) / (1 - expected)


def fleiss_kappa(counts: list[list[int]]) -> float:
    """Fleiss' kappa; `counts[i][j]` = raters who put item i in category j (same rater count per item)."""
    n_items = len(counts)
    raters = sum(counts[0]) if counts else 0
    if n_items == 0 or raters < 2 or any(sum(row) != raters for row in counts):
        raise ValueError("every item needs the same number (>= 2) of ratings")
    p_items = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    p_bar = sum(p_items) / n_items
    totals = [sum(row[j] for row in counts) for j in range(len(counts[0]))]
    p_cat = [t / (n_items * raters) for t in totals]
    p_e = sum(p * p for p in p_cat)
    return 1.0 if p_e == 1.0 else (p_bar - p_e) / (1 - p_e)


def agreement_report(corpus: Path, *, write: bool = True) -> dict[str, Any]:
    """Cohen's and Fleiss' kappa over the stored verdicts; written to report.md / report.json unless `write` is
    false (the review server's GET /report only reads)."""
    out = stage3_dir(corpus)
    store = ReviewStore(out / "reviews.sqlite")
    rows = store.all()
    by_sample: dict[str, dict[str, str]] = defaultdict(dict)
    for sample_id, reviewer, verdict, _ in rows:
        by_sample[sample_id][reviewer] = verdict
    reviewers = sorted({r for _, r, _, _ in rows})
    report: dict[str, Any] = {"reviews": len(rows), "reviewers": reviewers, "samples_reviewed": len(by_sample),
                              "accepted": sum(v == "accept" for _, _, v, _ in rows), "cohen": {}, "fleiss": None}
    for a, b in combinations(reviewers, 2):
        common = sorted(s for s, v in by_sample.items() if a in v and b in v)
        if common:
            report["cohen"][f"{a} vs {b}"] = {"items": len(common), "kappa": round(cohen_kappa(
                [by_sample[s][a] for s in common], [by_sample[s][b] for s in common]), 4)}
    sizes = Counter(len(v) for v in by_sample.values() if len(v) >= 2)
    if sizes:
        raters = sizes.most_common(1)[0][0]
        matrix = [[sum(x == c for x in v.values()) for c in VERDICTS] for v in by_sample.values() if len(v) == raters]
        report["fleiss"] = {"items": len(matrix), "raters_per_item": raters, "kappa": round(fleiss_kappa(matrix), 4)}
    lines = ["# QC stage 3: expert review", "", f"- reviews: {report['reviews']} by {len(reviewers)} reviewer(s) "
             f"on {report['samples_reviewed']} samples; accepted: {report['accepted']}"]
    for pair, value in report["cohen"].items():
        lines.append(f"- Cohen's kappa {pair}: {value['kappa']} over {value['items']} samples")
    if report["fleiss"]:
        f = report["fleiss"]
        lines.append(f"- Fleiss' kappa: {f['kappa']} over {f['items']} samples with {f['raters_per_item']} raters each")
    if not rows:
        lines.append("- no reviews yet: run `unimedvl data review DIR` and have at least two clinicians review the sample")
    if write:
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>unimedvl review</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:auto}} .s{{border:1px solid #ccc;margin:12px 0;padding:8px}}
img{{max-height:220px;margin:4px;border:1px solid #999}} .meta{{color:#555;font-size:90%}}</style></head><body>
<h1>Corpus review ({n} samples)</h1><p>Accept a sample if its text is medically correct and fits the image(s); otherwise reject it and say why.</p>
<form method="get"><label>Reviewer <input name="reviewer" value="{reviewer}" required></label> <button>Set</button></form>{body}</body></html>"""


def _review_ids(corpus: Path) -> set[str]:
    path = stage3_dir(corpus) / "review_sample.jsonl"
    return {json.loads(x)["id"] for x in path.read_text().splitlines()} if path.is_file() else set()


def _page(corpus: Path, reviewer: str, token: str = "") -> str:
    out = stage3_dir(corpus)
    path = out / "review_sample.jsonl"
    samples = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    done = {(s, r): (v, c) for s, r, v, c in ReviewStore(out / "reviews.sqlite").all()}
    blocks = []
    for s in samples:
        parts = []
        for it in s["items"]:
            if "image" in it:
                parts.append(f'<img src="/image/{urllib.parse.quote(it["image"] or "")}" alt="{html.escape(it["role"])} image">')
            else:
                parts.append(f"<p><b>{html.escape(it['role'])}:</b> {html.escape(it['text'] or '')}</p>")
        verdict, comment = done.get((s["id"], reviewer), ("", ""))
        blocks.append(
            f'<div class="s"><div class="meta">{html.escape(s["id"])} - {html.escape(s["modality"])} / {html.escape(s["task"])}'
            f'{" (template-made text)" if s.get("template_made") else ""} - current: {html.escape(verdict or "not reviewed")}</div>'
            f'{"".join(parts)}<form method="post" action="/review"><input type="hidden" name="sample_id" value="{html.escape(s["id"])}">'
            f'<input type="hidden" name="reviewer" value="{html.escape(reviewer)}">'
            f'<input type="hidden" name="token" value="{html.escape(token)}">'
            f'<input name="comment" size="60" placeholder="comment" value="{html.escape(comment)}"> '
            f'<button name="verdict" value="accept">Accept</button> <button name="verdict" value="reject">Reject</button></form></div>')
    return PAGE.format(n=len(samples), reviewer=html.escape(reviewer), body="".join(blocks) if reviewer else
                       "<p>Enter your name to start.</p>")


MAX_FORM_BYTES = 1 << 16


def make_server(corpus: Path, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The review page. Hardened for a machine holding patient images: only requests addressed to this host
    (a `Host` check, against DNS rebinding), verdicts only with the page's per-server token and from its own
    origin (no cross-site form posts), only for samples in the review set, a bounded body read with a
    timeout (a lying `Content-Length` cannot block a thread), and GET requests never write."""
    corpus = Path(corpus)
    store = ReviewStore(stage3_dir(corpus) / "reviews.sqlite")
    review_ids = _review_ids(corpus)
    token = secrets.token_urlsafe(24)
    allowed_hosts: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a client may take to send its request (socket timeout)

        def log_message(self, *args: Any) -> None:  # keep the console quiet; nothing identifying is logged anyway
            return

        def _send(self, code: int, body: bytes, kind: str = "text/html; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _host_ok(self) -> bool:
            if (self.headers.get("Host") or "").lower() in allowed_hosts:
                return True
            self._send(403, b"forbidden: this server answers only requests addressed to it", "text/plain")
            return False

        def do_GET(self) -> None:  # noqa: N802
            if not self._host_ok():
                return
            url = urllib.parse.urlparse(self.path)
            if url.path.startswith("/image/"):
                name = Path(urllib.parse.unquote(url.path[len("/image/"):])).name
                file = stage3_dir(corpus) / "images" / name
                if not file.is_file():
                    return self._send(404, b"not found", "text/plain")
                kinds = {".png": "image/png", ".jpeg": "image/jpeg", ".jpg": "image/jpeg"}
                return self._send(200, file.read_bytes(), kinds.get(file.suffix, "application/octet-stream"))
            if url.path == "/report":
                return self._send(200, json.dumps(agreement_report(corpus, write=False)).encode(), "application/json")
            reviewer = urllib.parse.parse_qs(url.query).get("reviewer", [""])[0]
            return self._send(200, _page(corpus, reviewer, token).encode())

        def do_POST(self) -> None:  # noqa: N802
            if not self._host_ok():
                return
            origin = self.headers.get("Origin")
            if origin is not None and urllib.parse.urlparse(origin).netloc.lower() not in allowed_hosts:
                return self._send(403, b"forbidden: cross-site form post", "text/plain")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._send(411, b"a Content-Length is required", "text/plain")
            if not 0 <= length <= MAX_FORM_BYTES:
                return self._send(413, b"form too large", "text/plain")
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                return self._send(408, b"the request body did not arrive", "text/plain")
            if len(body) < length:
                return self._send(400, b"the request body is shorter than its Content-Length", "text/plain")
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            get = lambda k: form.get(k, [""])[0]  # noqa: E731
            if not secrets.compare_digest(get("token"), token):
                return self._send(403, b"forbidden: the form token is missing or wrong (reload the page)", "text/plain")
            if get("sample_id") not in review_ids:
                return self._send(400, b"that sample is not in the review set", "text/plain")
            try:
                store.record(get("sample_id"), get("reviewer"), get("verdict"), get("comment"))
            except ValueError as exc:
                return self._send(400, html.escape(str(exc)).encode())
            self.send_response(303)
            self.send_header("Location", "/?reviewer=" + urllib.parse.quote(get("reviewer")))
            self.end_headers()

    server = ThreadingHTTPServer((host, port), Handler)
    bound = server.server_address[1]
    names = {host, "127.0.0.1", "localhost", "[::1]"} if host in ("127.0.0.1", "localhost", "::1") else {host}
    allowed_hosts.update(f"{name}:{bound}".lower() for name in names)
    return server
