"""Held-out VQA accuracy per question type, against majority-class baselines.

Question types: the template variants (`modality` open or as a choice, `finding`, `yesno` about the
record's own class or another one, `choice` between two classes) and `open` for real QA pairs.
Answers are compared after normalisation (lower case, punctuation and articles removed, "yes."="yes").

The held-out set is balanced by modality (at most `per_modality` questions per type and modality),
so that one large set does not decide the score. Two baselines, both learnt from the train split:
- majority: the most common train answer of the question type, for every question;
- majority given modality: the most common train answer of that type for the image's modality
  (the bar for finding questions, whose wording often names the modality). For modality questions it
  is the answer itself, so the tables print n/a there.
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from unimedvl.data.schema import Sample
from unimedvl.data.storage import iter_samples


def normalise(text: str) -> str:
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).lower().strip()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


QUESTION_TYPES = {"modality": "modality", "modality-choice": "modality", "finding": "finding", "yesno": "yesno",
                  "yesno-other": "yesno", "choice": "choice"}


def question_type(sample: Sample) -> str:
    return QUESTION_TYPES.get(sample.provenance.get("variant", ""), "open")


def question_and_answer(sample: Sample) -> tuple[str, str] | None:
    """The (question, reference answer) of a single-turn VQA sample with an image, else None."""
    user = [it.text for it in sample.items if it.kind == "text" and not it.loss]
    answers = [it.text for it in sample.items if it.kind == "text" and it.loss]
    if sample.task != "vqa" or not user or len(answers) != 1 or not sample.images():
        return None
    return user[-1] or "", answers[0] or ""


@dataclass
class Baselines:
    overall: dict[str, str]  # question type -> majority answer (normalised)
    by_modality: dict[tuple[str, str], str]  # (question type, modality) -> majority answer

    def given_modality(self, kind: str, modality: str) -> str:
        return self.by_modality.get((kind, modality), self.overall.get(kind, ""))


def majority_answers(corpus: str | Path, split: str = "train") -> Baselines:
    overall: dict[str, Counter] = defaultdict(Counter)
    by_modality: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for sample in iter_samples(corpus, split):
        qa = question_and_answer(sample)
        if qa:
            kind, answer = question_type(sample), normalise(qa[1])
            overall[kind][answer] += 1
            by_modality[(kind, sample.modality)][answer] += 1
    # Ties break on the answer text, so the baseline does not depend on the corpus' row order.
    top = lambda c: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # noqa: E731
    return Baselines({k: top(c) for k, c in overall.items()}, {k: top(c) for k, c in by_modality.items()})


@dataclass
class Scored:
    kind: str
    modality: str
    correct: bool
    majority: bool
    majority_given_modality: bool


@dataclass
class VQAResult:
    rows: list[Scored] = field(default_factory=list)
    majority: dict[str, str] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    @staticmethod
    def _rates(rows: list[Scored]) -> dict[str, float]:
        n = len(rows)
        return {"n": n, "accuracy": sum(r.correct for r in rows) / n, "baseline": sum(r.majority for r in rows) / n,
                "baseline_given_modality": sum(r.majority_given_modality for r in rows) / n}

    @property
    def per_type(self) -> dict[str, dict]:
        kinds = sorted({r.kind for r in self.rows})
        return {k: {**self._rates([r for r in self.rows if r.kind == k]), "majority": self.majority.get(k, "")}
                for k in kinds}

    @property
    def per_type_and_modality(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for kind, modality in sorted({(r.kind, r.modality) for r in self.rows}):
            out[kind][modality] = self._rates([r for r in self.rows if r.kind == kind and r.modality == modality])
        return dict(out)

    def table(self) -> list[str]:
        lines = ["| question type | n | accuracy | majority baseline | majority given modality | majority answer |",
                 "|---|---|---|---|---|---|"]
        for kind, r in self.per_type.items():
            lines.append(f"| {kind} | {r['n']} | {r['accuracy']:.3f} | {r['baseline']:.3f} | "
                         f"{_given(kind, r)} | {r['majority']} |")
        return lines

    def modality_table(self) -> list[str]:
        lines = ["| question type | modality | n | accuracy | majority given modality |", "|---|---|---|---|---|"]
        for kind, rows in self.per_type_and_modality.items():
            for modality, r in rows.items():
                lines.append(f"| {kind} | {modality} | {r['n']} | {r['accuracy']:.3f} | {_given(kind, r)} |")
        return lines


def _given(kind: str, rates: dict) -> str:
    return "n/a" if kind == "modality" else f"{rates['baseline_given_modality']:.3f}"


def evaluate_vqa(engine, corpus: str | Path, *, splits: tuple[str, ...] = ("val", "test"),  # noqa: ANN001
                 per_modality: int = 25, max_new_tokens: int = 16, examples: int = 16) -> VQAResult:
    """Ask every selected held-out question (greedy) and score it against both baselines."""
    baselines = majority_answers(corpus)
    taken: Counter = Counter()
    result = VQAResult(majority=dict(baselines.overall))
    for sample in (s for split in splits for s in iter_samples(corpus, split)):
        qa = question_and_answer(sample)
        kind = question_type(sample)
        if not qa or taken[(kind, sample.modality)] >= per_modality:
            continue
        taken[(kind, sample.modality)] += 1
        question, truth = qa
        image = Image.open(io.BytesIO(sample.images()[0].data))
        answer = engine.ask([image], question, max_new_tokens=max_new_tokens).text
        truth_n = normalise(truth)
        result.rows.append(Scored(kind, sample.modality, normalise(answer) == truth_n,
                                  baselines.overall.get(kind) == truth_n,
                                  baselines.given_modality(kind, sample.modality) == truth_n))
        if sum(1 for e in result.examples if e["modality"] == sample.modality) < 2 and len(result.examples) < examples:
            result.examples.append({"type": kind, "modality": sample.modality, "question": question, "truth": truth,
                                    "answer": answer})
    return result
