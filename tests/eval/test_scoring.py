"""Scoring rules, and accuracy against a hand-counted predictions file."""

from __future__ import annotations

from pathlib import Path

import pytest

from unimedvl.eval.benchmarks.base import Benchmark, EvalItem
from unimedvl.eval.runner import record_for, summarise
from unimedvl.eval.scoring import closed_correct, extract_choice, normalise, token_recall

OPTIONS = (("A", "CT"), ("B", "chest X-ray"), ("C", "MRI"), ("D", "ultrasound"))


def test_normalisation() -> None:
    assert normalise("<think> hmm </think> The  Left-Lung!") == "left lung"
    assert normalise("<think> unfinished reasoning") == ""


@pytest.mark.parametrize("prediction, answer, correct", [
    ("Yes.", "yes", True), ("yes, there is a mass", "Yes", True), ("No", "yes", False),
    ("Yesterday", "yes", False), ("left", "Left", True), ("left lung", "left", False)])
def test_closed(prediction: str, answer: str, correct: bool) -> None:
    assert closed_correct(prediction, answer) is correct


def test_open_token_recall() -> None:
    assert token_recall("a mass in the left upper lobe", "left upper lobe") == 1.0
    assert token_recall("upper", "left upper lobe") == pytest.approx(1 / 3)


@pytest.mark.parametrize("prediction, letter", [
    ("B", "B"), ("(C)", "C"), ("D. ultrasound", "D"), ("The answer is A.", "A"), ("Answer: c", "C"),
    ("chest x-ray", "B"), ("It is an MRI scan.", "C"), ("A glioma.", None),  # the article "A" is not an answer
    ("I cannot tell.", None), ("CT or MRI", None), ("F", None)])
def test_choice_letter_extraction(prediction: str, letter: str | None) -> None:
    assert extract_choice(prediction, OPTIONS) == letter


def test_accuracy_equals_a_hand_count(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    items = [EvalItem("1", "Is there a mass?", "yes", "closed", image, groups={"answer_type": "closed"}),
             EvalItem("2", "Is there a mass?", "no", "closed", image, groups={"answer_type": "closed"}),
             EvalItem("3", "Where?", "left lung", "open", image, groups={"answer_type": "open"}),
             EvalItem("4", "Which?", "B", "choice", image, options=OPTIONS, groups={"answer_type": "choice"}),
             EvalItem("5", "Which?", "C", "choice", image, options=OPTIONS, groups={"answer_type": "choice"})]
    predictions = ["Yes, there is.", "Yes.", "left lung", "It is probably a chest X-ray", "no idea"]
    # By hand: 1 right, 2 wrong, 3 right (exact), 4 right (option text), 5 wrong and unparseable.
    rows = [record_for(i, p) for i, p in zip(items, predictions)]
    result = summarise(Benchmark("t", "t", lambda p: items, ""), rows, {})
    assert result["accuracy"] == pytest.approx(3 / 5) and result["n"] == 5 and result["unparseable"] == 1
    assert result["by_kind"]["closed"] == {"n": 2, "accuracy": 0.5}
    assert result["breakdowns"]["answer_type"]["choice"] == {"n": 2, "accuracy": 0.5}
    assert result["open_token_recall"] == 1.0
    assert result["majority_baseline"]["n"] == 4  # closed + choice questions
    low, high = result["accuracy_interval"]
    assert low < 0.6 < high and high - low > 0.4  # 3 of 5 questions decide little
    # Ties go to the first answer alphabetically: the guesser says "no" (right on 2) and "B" (right on 4); the
    # model is right on 1 and 4. Paired: one question each way, so nothing says the model is above the guesser.
    base = result["majority_baseline"]
    assert base["answers"] == {"choice": "b", "yes/no": "no"}
    assert (base["model_only_right"], base["baseline_only_right"], base["p_above"]) == (1, 1, 0.75)
