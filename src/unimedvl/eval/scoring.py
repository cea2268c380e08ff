"""Scoring answers as the medical VQA literature does, with every rule written down (docs/evaluation.md).

* Normalisation: `<think>...</think>` removed, lower case, every character that is not a letter,
  digit or space becomes a space, the articles a / an / the dropped, white space collapsed.
* Closed questions: correct iff the normalised prediction equals the normalised reference; for a
  yes / no reference the prediction's first normalised word is compared instead ("Yes, there is
  ..." counts as yes), since closed answers are short by design.
* Open questions: exact match after normalisation (`correct`), and token recall = the share of
  the reference's normalised words found in the prediction (the LLaVA-Med "recall", computed over
  every open question; LLaVA-Med's script also dropped wrongly answered closed questions from its
  denominator, which inflates closed accuracy; here every question counts).
* Multiple choice: an answer letter is read from the prediction (`A`, `A.`, `(A)`, `A)`, `A:` at the
  start, or "answer is A", "option A", "answer: A" anywhere), else the option whose normalised text
  the prediction equals or uniquely contains; an answer that gives neither is counted wrong and
  reported as unparseable (never replaced by a random pick).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unimedvl.eval.benchmarks.base import EvalItem

_ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> str:
    text = re.sub(r"<think>.*?(</think>|$)", " ", text, flags=re.DOTALL).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def closed_correct(prediction: str, answer: str) -> bool:
    pred, ref = normalise(prediction), normalise(answer)
    if ref in ("yes", "no"):
        return pred.split(" ", 1)[0] == ref
    return pred == ref


def token_recall(prediction: str, answer: str) -> float:
    ref = normalise(answer).split()
    if not ref:
        return 0.0
    words = set(normalise(prediction).split())
    return sum(w in words for w in ref) / len(ref)


_LEADING_LETTER = re.compile(r"^\s*\(?([A-Za-z])(?:\)|\.|:|$)")
_NAMED_LETTER = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Za-z])\b\)?", re.IGNORECASE)


def extract_choice(prediction: str, options: tuple[tuple[str, str], ...]) -> str | None:
    """The option letter an answer gives, or None when it gives none (see the module docstring)."""
    letters = {letter.upper() for letter, _ in options}
    text = re.sub(r"<think>.*?(</think>|$)", " ", prediction, flags=re.DOTALL).strip()
    for pattern in (_LEADING_LETTER, _NAMED_LETTER):
        match = pattern.search(text)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    pred = normalise(text)
    if not pred:
        return None
    exact = [letter for letter, option in options if normalise(option) == pred]
    if exact:
        return exact[0].upper()
    contained = [letter for letter, option in options if normalise(option)
                 and re.search(rf"\b{re.escape(normalise(option))}\b", pred)]
    return contained[0].upper() if len(contained) == 1 else None


@dataclass(frozen=True)
class Score:
    correct: bool
    parsed: bool = True  # False: a multiple-choice answer that named no option
    recall: float | None = None  # open questions: token recall
    choice: str | None = None  # multiple choice: the letter read from the answer


def score(item: EvalItem, prediction: str) -> Score:
    if item.kind == "closed":
        return Score(correct=closed_correct(prediction, item.answer))
    if item.kind == "open":
        return Score(correct=normalise(prediction) == normalise(item.answer),
                     recall=token_recall(prediction, item.answer))
    if item.kind == "choice":
        letter = extract_choice(prediction, item.options)
        return Score(correct=letter == item.answer, parsed=letter is not None, choice=letter)
    raise ValueError(f"item {item.id}: {item.kind!r} answers are scored with the report metrics")
