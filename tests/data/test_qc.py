"""QC stage 2 (LLM judge through an OpenAI-compatible endpoint, cached) and stage 3 (review page, kappa)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from data_helpers import SAMPLE_DATA, write_config
from http_helpers import reply_json, serving

from unimedvl.data.pipeline import BuildConfig, build_corpus
from unimedvl.data.qc.coarse import CoarseLimits, check_text, near_duplicate_pairs
from unimedvl.data.qc.review import ReviewStore, agreement_report, cohen_kappa, fleiss_kappa, make_server


class FakeJudge(BaseHTTPRequestHandler):
    """A local stand-in for an OpenAI-compatible medical LLM: grades answers that say 'pneumonia' 5, others 2."""

    requests: list[dict] = []

    def log_message(self, *args) -> None:  # noqa: ANN002
        return

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append(body)
        text = body["messages"][1]["content"]
        score = 5 if "pneumonia" in text.lower() else 2
        reply_json(self, {"choices": [{"message": {"content": f'Sure. {{"score": {score}, "reason": "rubric"}}'}}]})


@pytest.fixture()
def judge_url():
    FakeJudge.requests = []
    with serving(FakeJudge) as url:
        yield f"{url}/v1"


def test_llm_judge_scores_thresholds_and_caches(tmp_path: Path, judge_url: str) -> None:
    sources = [{"name": "pneumonia", "adapter": "medmnist", "path": str(SAMPLE_DATA / "medmnist/pneumoniamnist_no_test.npz"),
                "modality": "chest_xray", "licence": "CC-BY-4.0", "limit": 20, "tasks": ["vqa"],
                "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"}}}]
    qc = {"stage2": {"scorers": [{"type": "modality_consistency"},
                                 {"type": "llm_judge", "endpoint": judge_url, "model": "medgemma-27b"}],
                     "thresholds": {"default": 0.5}}}
    config = write_config(tmp_path, sources, qc=qc, splits={"train": 1.0})
    out = tmp_path / "out"
    manifest = build_corpus(BuildConfig.from_yaml(config), out, log=lambda m: None)
    asked = len(FakeJudge.requests)
    assert asked > 0 and FakeJudge.requests[0]["model"] == "medgemma-27b"
    assert "physician" in FakeJudge.requests[0]["messages"][0]["content"]
    rejected = manifest.origin["qc"]["stage2_rejected"].get("alignment_below_threshold:llm_judge", 0)
    # The two modality questions per record never mention pneumonia: graded 2 -> 0.25 < 0.5; the finding,
    # yes / no and choice questions (4 per record) are kept.
    assert rejected == 40 and manifest.total == 80
    stage2 = json.loads((out / "qc/stage2.json").read_text())
    assert "llm_judge" in stage2["scores"]["chest_xray"]
    # A fresh build in another folder that shares the cache file asks nothing new.
    (tmp_path / "out2" / "work").mkdir(parents=True)
    (tmp_path / "out2" / "work" / "llm_judge_cache.sqlite").write_bytes((out / "work" / "llm_judge_cache.sqlite").read_bytes())
    build_corpus(BuildConfig.from_yaml(config), tmp_path / "out2", log=lambda m: None)
    assert len(FakeJudge.requests) == asked


def test_kappa_values() -> None:
    assert cohen_kappa(["a", "a", "r", "r"], ["a", "a", "r", "r"]) == 1.0
    assert cohen_kappa(["a", "r", "a", "r"], ["r", "a", "r", "a"]) == -1.0
    # Fleiss' classic example (Fleiss 1971 as tabulated on Wikipedia): 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert round(fleiss_kappa(table), 3) == 0.210
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 0], [2, 0]])


def test_review_page_stores_verdicts_and_reports_agreement(sample_corpus) -> None:
    corpus, _ = sample_corpus
    lines = (corpus / "qc/stage3/review_sample.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines][:6]
    server = make_server(corpus, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = urllib.request.urlopen(f"{base}/?reviewer=dr_a").read().decode()
        assert ids[0] in page and "<img" in page
        image_name = page.split('<img src="/image/')[1].split('"')[0]
        assert urllib.request.urlopen(f"{base}/image/{image_name}").read()[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")
        token = page.split('name="token" value="')[1].split('"')[0]
        verdicts = {"dr_a": "aaarra", "dr_b": "aarrra", "dr_c": "aaarrr"}
        for reviewer, marks in verdicts.items():
            for sample_id, mark in zip(ids, marks):
                form = urllib.parse.urlencode({"sample_id": sample_id, "reviewer": reviewer, "token": token,
                                               "verdict": "accept" if mark == "a" else "reject",
                                               "comment": "looks fine" if mark == "a" else "answer does not fit"})
                urllib.request.urlopen(f"{base}/review", data=form.encode())
        before = sorted(p.name for p in (corpus / "qc/stage3").iterdir())
        report = json.loads(urllib.request.urlopen(f"{base}/report").read())
        assert sorted(p.name for p in (corpus / "qc/stage3").iterdir()) == before  # GET never writes
    finally:
        server.shutdown()
        server.server_close()
    assert report["reviews"] == 18 and report["samples_reviewed"] == 6
    agreement_report(corpus)  # `unimedvl data agreement` writes the report
    a, b = list(verdicts["dr_a"]), list(verdicts["dr_b"])
    assert report["cohen"]["dr_a vs dr_b"]["kappa"] == round(cohen_kappa(a, b), 4)
    assert report["fleiss"]["items"] == 6 and report["fleiss"]["raters_per_item"] == 3
    assert "Fleiss' kappa" in (corpus / "qc/stage3/report.md").read_text()
    assert len(ReviewStore(corpus / "qc/stage3/reviews.sqlite").all()) == 18
    ReviewStore(corpus / "qc/stage3/reviews.sqlite").record(ids[0], "dr_a", "reject", "changed my mind")
    assert agreement_report(corpus)["reviews"] == 18  # one verdict per reviewer and sample, updated in place


def test_text_filters_and_near_duplicates() -> None:
    limits = CoarseLimits()
    assert check_text("Is there a pleural effusion?", limits) is None
    assert check_text("   ", limits) == "text_empty"
    assert check_text("这是什么器官", limits) == "text_language"
    assert check_text("aaaaaaaaaaaaaaaaaaaaaaaaa", limits) == "text_garbage"
    assert check_text("#$%^&*()!@#$%^&*", limits) == "text_garbage"
    base = 0x1234_5678_9ABC_DEF0 << 192 | 0xFFFF
    hashes = [(0, base), (1, base ^ 0b111), (2, ~base & ((1 << 256) - 1)), (3, base ^ (1 << 200))]
    assert near_duplicate_pairs(hashes, 4) == [(0, 1), (0, 3), (1, 3)]


def test_the_review_server_refuses_forged_rebinding_and_stalled_requests(sample_corpus) -> None:  # noqa: ANN001
    """Issue 13, item 7: cross-site posts, DNS rebinding, a lying Content-Length, verdicts outside the set."""
    import http.client
    import socket

    corpus, _ = sample_corpus
    ids = [json.loads(x)["id"] for x in (corpus / "qc/stage3/review_sample.jsonl").read_text().splitlines()]
    server = make_server(corpus, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    stored = len(ReviewStore(corpus / "qc/stage3/reviews.sqlite").all())

    def request(method: str, path: str, body: str = "", headers: dict | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        connection.request(method, path, body=body.encode(), headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()

    try:
        page = request("GET", "/?reviewer=dr_a")[1].decode()
        token = page.split('name="token" value="')[1].split('"')[0]
        form = lambda **kw: urllib.parse.urlencode({"sample_id": ids[0], "reviewer": "dr_x", "verdict": "accept",  # noqa: E731
                                                    "token": token, **kw})
        kind = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request("GET", "/", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
        assert request("POST", "/review", form(), {**kind, "Host": f"evil.example:{port}"})[0] == 403
        assert request("POST", "/review", form(), {**kind, "Origin": "http://evil.example"})[0] == 403  # cross-site
        assert request("POST", "/review", form(token=""), kind)[0] == 403  # no token: a forged form
        assert request("POST", "/review", form(sample_id="not-in-the-set"), kind)[0] == 400
        assert request("POST", "/review", form(), {**kind, "Content-Length": "abc"})[0] == 411
        assert request("POST", "/review", form(), {**kind, "Content-Length": str(10**9)})[0] == 413
        # A body shorter than its Content-Length: answered within the socket timeout, not a thread blocked forever.
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.sendall(f"POST /review HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 500\r\n\r\nabc".encode())
        started = time.monotonic()
        reply = raw.recv(200)
        raw.close()
        assert reply.startswith(b"HTTP/1.0 408") and time.monotonic() - started < 25
        assert len(ReviewStore(corpus / "qc/stage3/reviews.sqlite").all()) == stored  # nothing forged got in
        assert request("POST", "/review", form(), kind)[0] == 303  # the page's own form still works
    finally:
        server.shutdown()
        server.server_close()
