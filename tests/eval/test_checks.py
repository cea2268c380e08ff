"""The checks catch a model that answers from the text alone, and pass one that reads the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from eval_helpers import LooksAtTheImage, TextOnly, write_bright_dark_set

from unimedvl.eval.checks import flipped_question, sign_test_p, wilson_interval
from unimedvl.eval.compare import compare, parse_runs
from unimedvl.eval.runner import run_benchmark


def test_a_text_only_model_fails_every_check(tmp_path: Path) -> None:
    benchmark = write_bright_dark_set(tmp_path / "set")
    results = run_benchmark(benchmark, benchmark.bundled, TextOnly(), tmp_path / "out")
    checks = results["checks"]
    assert results["accuracy"] == 0.5  # always "yes": the majority baseline, not a sign of reading the image
    assert not checks["image_dependence"]["passed"]
    assert checks["image_dependence"]["blank"]["accuracy"] == results["accuracy"]
    assert not checks["phrasing"]["passed"] and checks["phrasing"]["agreement"] == 0.0
    assert set(checks["phrasing"]["not_yes_no"].values()) == {0}  # it always says yes or no, just not from the image
    assert not checks["resolution"]["passed"]
    assert "| image dependence |" in (tmp_path / "out" / "report.md").read_text()


def test_a_model_that_reads_the_image_passes_them(tmp_path: Path) -> None:
    benchmark = write_bright_dark_set(tmp_path / "set")
    results = run_benchmark(benchmark, benchmark.bundled, LooksAtTheImage(), tmp_path / "out")
    checks = results["checks"]
    assert results["accuracy"] == 1.0
    dependence = checks["image_dependence"]
    assert dependence["passed"] and dependence["blank"]["accuracy"] == 0.5 and dependence["blank"]["p"] < 0.05
    assert checks["phrasing"]["passed"] and checks["phrasing"]["agreement"] == 1.0 and checks["phrasing"]["flipped"] == 12
    assert checks["resolution"]["passed"] and checks["resolution"]["28px"]["accuracy"] == 1.0


def test_a_set_without_yes_no_questions_gets_no_phrasing_verdict(tmp_path: Path) -> None:
    """Modality questions are answered with a name: the phrasing check does not apply, so it neither passes nor fails."""
    benchmark = write_bright_dark_set(tmp_path / "set")
    items = [json.loads(line) for line in (benchmark.bundled / "items.jsonl").read_text().splitlines()]
    for item in items:
        item.update(question="How bright is this image?", answer="Bright." if item["answer"] == "yes" else "Dark.")
        del item["paraphrases"], item["flipped"]
    (benchmark.bundled / "items.jsonl").write_text("\n".join(json.dumps(item) for item in items) + "\n")
    results = run_benchmark(benchmark, benchmark.bundled, NamesTheBrightness(), tmp_path / "out")
    assert results["accuracy"] == 1.0 and "phrasing" not in results["checks"]
    assert results["checks"]["image_dependence"]["passed"] and results["checks"]["resolution"]["passed"]
    assert "phrasing consistency" not in (tmp_path / "out" / "report.md").read_text()


class NamesTheBrightness:
    name = "names"

    def predict(self, requests: list) -> list[str]:  # noqa: ANN001
        return ["Bright." if float(np.asarray(r.image.convert("L")).mean()) > 140 else "Dark." for r in requests]


def test_polarity_rules_and_the_sign_test() -> None:
    assert flipped_question("Is there pneumonia?") == "Is there no pneumonia?"
    assert flipped_question("Is this chest X-ray normal?") == "Is this chest X-ray abnormal?"
    assert flipped_question("Is the heart abnormal?") == "Is the heart normal?"
    assert flipped_question("Does this image show a fracture?") == "Does this image show no fracture?"
    assert flipped_question("What is this?") is None
    assert sign_test_p(6, 0) == 1 / 64 and sign_test_p(0, 0) == 1.0 and sign_test_p(1, 1) == 0.75


def test_wilson_intervals_match_published_values() -> None:
    # Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775; 15/148 -> 0.0624-0.1605
    for (k, n), (low, high) in {(81, 263): (0.2553, 0.3662), (0, 10): (0.0, 0.2775), (15, 148): (0.0624, 0.1605)}.items():
        got = wilson_interval(k, n)
        assert abs(got[0] - low) < 5e-4 and abs(got[1] - high) < 5e-4, (k, n, got)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) is None
    assert wilson_interval(24, 32)[0] < 0.8 < wilson_interval(24, 32)[1]  # 0.75 of 32 images: 0.8 not ruled out


def test_answers_that_are_neither_yes_nor_no_are_counted_per_phrasing(tmp_path: Path) -> None:
    class NamesTheClass(LooksAtTheImage):  # reads the image, but answers an unseen phrasing with a class name
        def predict(self, requests):  # noqa: ANN001, ANN201
            answers = super().predict(requests)
            return ["Bright." if "Answer yes or no" in r.prompt else a for r, a in zip(requests, answers)]

    benchmark = write_bright_dark_set(tmp_path / "set")
    phrasing = run_benchmark(benchmark, benchmark.bundled, NamesTheClass(), tmp_path / "out")["checks"]["phrasing"]
    # only paraphrase 2, "Is the image bright? Answer yes or no.", gets "Bright.": on every item, and counted wrong
    assert phrasing["not_yes_no"] == {"original": 0, "paraphrase 1": 0, "paraphrase 2": phrasing["n"], "flipped": 0}
    assert phrasing["accuracy_per_phrasing"]["paraphrase 2"] == 0.0 and not phrasing["passed"]
    assert "answered neither yes nor no" in (tmp_path / "out" / "report.md").read_text()
    assert f"| 0.0 ({phrasing['n']} not yes / no) |" in compare(parse_runs([f"v={tmp_path / 'out'}"]))
