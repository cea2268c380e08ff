"""The runner: resumable, sharded runs that merge to the one-process result, endpoints, the CLI."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import LooksAtTheImage, TextOnly, reply_json, serving, write_bright_dark_set
from PIL import Image

from unimedvl.cli import main
from unimedvl.eval.predictors import EndpointPredictor
from unimedvl.eval.runner import RunOptions, merge_shards, run_benchmark


class Crashes(LooksAtTheImage):
    def __init__(self, after: int) -> None:
        self.left = after

    def predict(self, requests):  # noqa: ANN001, ANN201
        if self.left <= 0:
            raise KeyboardInterrupt("killed")
        self.left -= len(requests)
        return super().predict(requests)


def test_a_killed_run_resumes_without_asking_again(tmp_path: Path) -> None:
    benchmark = write_bright_dark_set(tmp_path / "set")
    options = RunOptions(batch_size=4, checks=("image_dependence",))
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(benchmark, benchmark.bundled, Crashes(after=8), tmp_path / "out", options=options)
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 8
    with (tmp_path / "out" / "predictions.jsonl").open("a") as handle:
        handle.write('{"id": "img1')  # a line torn by the kill
    counting = TextOnly()
    counting.predict = lambda requests, inner=counting.predict: inner(requests)  # noqa: E731
    resumed = run_benchmark(benchmark, benchmark.bundled, counting, tmp_path / "out", options=options)
    assert counting.calls == 4 + 24  # the 4 missing items, then the check's variants; nothing asked twice
    assert resumed["n"] == 12 and len({json.loads(x)["id"] for x in (tmp_path / "out" / "predictions.jsonl").open()}) == 12


def test_shards_merge_to_the_one_process_results(tmp_path: Path) -> None:
    benchmark = write_bright_dark_set(tmp_path / "set")
    single = run_benchmark(benchmark, benchmark.bundled, LooksAtTheImage(), tmp_path / "single", options=RunOptions(limit=10))
    for i in range(2):
        run_benchmark(benchmark, benchmark.bundled, LooksAtTheImage(), tmp_path / "sharded",
                      options=RunOptions(limit=10, shard=(i, 2)))
    merged = merge_shards(benchmark, tmp_path / "sharded")
    assert merged == single and single["n"] == 10
    assert (tmp_path / "single" / "results.json").read_text() == (tmp_path / "sharded" / "results.json").read_text()


class _FakeOpenAI(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeOpenAI.seen.append(body)
        parts = body["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        import base64
        import io

        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        prompt = next(p["text"] for p in parts if p["type"] == "text")
        bright = float(np.asarray(image.convert("L")).mean()) > 140
        answer = "Yes" if bright != ("dark" in prompt) else "No"
        reply_json(self, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_an_openai_compatible_endpoint_is_scored_the_same_way(tmp_path: Path) -> None:
    with serving(_FakeOpenAI) as base:
        benchmark = write_bright_dark_set(tmp_path / "set")
        url = f"{base}/v1"
        via_http = run_benchmark(benchmark, benchmark.bundled, EndpointPredictor(url, "fake-vlm"), tmp_path / "http")
        local = run_benchmark(benchmark, benchmark.bundled, LooksAtTheImage(), tmp_path / "local")
        assert via_http["accuracy"] == local["accuracy"] == 1.0
        assert via_http["checks"] == local["checks"]
        assert _FakeOpenAI.seen[0]["model"] == "fake-vlm" and _FakeOpenAI.seen[0]["temperature"] == 0
        failing = EndpointPredictor("http://127.0.0.1:9/v1", "x", retries=0, timeout=2)
        from unimedvl.errors import InputError

        with pytest.raises(InputError, match="failed after 1 tries"):
            run_benchmark(benchmark, benchmark.bundled, failing, tmp_path / "down")


def test_cli_eval_on_a_bundled_set_and_its_errors(tmp_path: Path, capsys, fixture_dir: Path) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "modality", "--limit", "3", "--no-checks", "-c", str(fixture_dir), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 3 and results["model"]["checkpoint"] == str(fixture_dir) and len(results["data_checksum"]) == 64
    assert set(results["versions"]) >= {"unimedvl", "torch", "python"} and (out / "report.md").is_file()
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert {"id", "question", "answer", "prediction", "correct", "modality"} <= set(lines[0])
    capsys.readouterr()
    assert main(["eval", "vqa-rad", "--out", str(out)]) == 2
    assert "vqa-rad is not bundled: give --data" in capsys.readouterr().err
    assert main(["eval", "modality", "--shard", "3/2"]) == 2
    assert "--shard must be i/n with 0 <= i < n" in capsys.readouterr().err
    assert main(["eval", "modality", "--endpoint", "localhost:8000"]) == 2
    assert "--endpoint must look like http://host:port/v1#model-name" in capsys.readouterr().err


def test_cli_pairs(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for folder in ("pred", "target", "pm", "tm"):
        (tmp_path / folder).mkdir()
    for name in ("a", "b"):
        target = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(target).save(tmp_path / "target" / f"{name}.png")
        Image.fromarray(np.clip(target.astype(int) + 5, 0, 255).astype(np.uint8)).save(tmp_path / "pred" / f"{name}.png")
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[:8] = 255
        Image.fromarray(mask).save(tmp_path / "pm" / f"{name}.png")
        Image.fromarray((mask > 0).astype(np.uint8)).save(tmp_path / "tm" / f"{name}.png")
    Image.fromarray(target).save(tmp_path / "pred" / "unmatched.png")
    assert main(["eval", "pairs", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target"),
                 "--out", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["n"] == 2 and results["psnr"] > 30 and set(results["per_file"]) == {"a", "b"}
    assert results["unmatched"]["pred"] == ["unmatched"]
    assert main(["eval", "pairs", "--pred", str(tmp_path / "pm"), "--target", str(tmp_path / "tm"), "--masks",
                 "--out", str(tmp_path / "m")]) == 0
    masks = json.loads((tmp_path / "m" / "results.json").read_text())
    assert masks["dice"] == 1.0 and masks["iou"] == 1.0
    assert main(["eval", "pairs", "--pred", str(tmp_path / "nope"), "--target", str(tmp_path / "tm")]) == 2


class _FakeJudge(BaseHTTPRequestHandler):
    asked = 0

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeJudge.asked += 1
        user = body["messages"][1]["content"]
        reference = user.split("Reference answer: ")[1].split("\n")[0]
        candidate = user.split("Candidate answer: ")[1]
        verdict = "true" if reference.split()[-1].lower() in candidate.lower() else "false"
        reply_json(self, {"choices": [{"message": {"content": f'{{"correct": {verdict}}}'}}]})

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_an_llm_judge_grades_open_answers_with_a_cache(tmp_path: Path) -> None:
    from unimedvl.eval.benchmarks import bundled
    from unimedvl.eval.benchmarks.base import Benchmark
    from unimedvl.eval.judge import LLMJudge

    (tmp_path / "set").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "set" / "x.png")
    (tmp_path / "set" / "items.jsonl").write_text("\n".join(json.dumps(
        {"id": str(i), "question": "Where is the lesion?", "answer": "left lower lobe", "kind": "open", "image": "x.png"})
        for i in range(3)) + "\n")
    benchmark = Benchmark("open", "open", bundled.load, "", bundled=tmp_path / "set")

    class Says:
        name = "says"

        def predict(self, requests):  # noqa: ANN001, ANN201
            return ["in the lower lobe on the left"] * len(requests)

    with serving(_FakeJudge) as base:
        url = f"{base}/v1"
        for out in ("a", "b"):
            judge = LLMJudge(url, "judge-model", tmp_path / "cache.sqlite")
            results = run_benchmark(benchmark, benchmark.bundled, Says(), tmp_path / out,
                                    options=RunOptions(checks=(), judge=judge))
        assert results["accuracy"] == 0.0 and results["open_judge"] == {"accuracy": 1.0, "no_verdict": 0, "n": 3}
        assert _FakeJudge.asked == 1  # one distinct (question, reference, answer): the rest came from the cache
