"""Questions that defeat language priors: every record is asked yes and no, choices are answered with a
class name, every modality is asked about, and the evaluation sets' paraphrases are never trained on."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from unimedvl.assets import EVAL_SETS
from unimedvl.data.schema import ImageRef
from unimedvl.data.sources.base import RawRecord, RecordError, SourceConfig, encode_png
from unimedvl.data.sources.folders import ClassFolder
from unimedvl.data.tasks import (
    CHOICE_SUFFIXES,
    CLASS_CHOICES,
    FINDING_YES_NO,
    MODALITY_ANSWERS,
    MODALITY_SYNONYMS,
    QUESTION_PREFIXES,
    STATE_YES_NO,
    YES_NO_SUFFIXES,
    BuildContext,
    build_samples,
)

PNEUMONIA = BuildContext(tasks=("vqa",), label_set=("no pneumonia", "pneumonia"),
                         options={"class_names": {"no pneumonia": "normal"}, "states": ["normal"]})


def _image(seed: int) -> ImageRef:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8))


def _record(index: int, label: str, modality: str = "chest_xray") -> RawRecord:
    return RawRecord(source="cxr", key=f"r{index}", modality=modality, licence="CC-BY-4.0", group=f"p{index}",
                     images=[_image(index)], label=label)


def _qa(sample) -> tuple[str, str]:  # noqa: ANN001
    texts = sample.texts()
    return texts[-2], texts[-1]


def _samples(records: int = 400) -> list:
    return [s for i in range(records) for s in build_samples(_record(i, ("pneumonia", "no pneumonia")[i % 2]), PNEUMONIA)]


def test_every_record_is_asked_once_yes_and_once_no() -> None:
    samples = [s for s in build_samples(_record(0, "pneumonia"), PNEUMONIA)]
    by_variant = {s.provenance["variant"]: _qa(s) for s in samples}
    assert set(by_variant) == {"modality", "modality-choice", "finding", "yesno", "yesno-other", "choice"}
    assert by_variant["yesno"][1] == "Yes." and by_variant["yesno-other"][1] == "No."
    assert "pneumonia" in by_variant["yesno"][0] and "normal" in by_variant["yesno-other"][0]
    assert all(s.provenance["label"] == "pneumonia" for s in samples)  # the trainer balances classes by it


def test_each_phrasing_is_answered_yes_and_no_equally_often_given_balanced_classes() -> None:
    answers: dict[str, Counter] = defaultdict(Counter)
    for sample in _samples(2000):
        if sample.provenance["variant"].startswith("yesno"):
            question, answer = _qa(sample)
            answers[question][answer] += 1
    assert len(answers) >= 10  # several phrasings, findings and states
    common = {q: c for q, c in answers.items() if sum(c.values()) >= 40}
    assert len(common) >= 10
    for question, counts in common.items():
        assert set(counts) == {"Yes.", "No."}, question
        assert 0.3 <= counts["Yes."] / sum(counts.values()) <= 0.7, (question, counts)
    # states are asked as states, findings as findings
    assert any(q == "Is this chest X-ray normal?" for q in answers)
    assert any(q == "Is there pneumonia?" for q in answers)
    assert not any("show normal?" in q or "Is there normal" in q for q in answers)


def test_choice_questions_are_answered_with_the_class_name_in_either_order() -> None:
    choices = [_qa(s) for s in _samples(200) if s.provenance["variant"] == "choice"]
    answers = Counter(a for _, a in choices)
    assert set(answers) == {"Pneumonia.", "Normal."}
    first_named = Counter(q.lower().replace("?", "").split(" or ")[0].split()[-1] for q, _ in choices)
    assert first_named["normal"] > 20 and first_named["pneumonia"] > 20  # the true class is not always first
    for question, answer in choices:
        assert "normal" in question.lower() and "pneumonia" in question.lower()


def test_modality_questions_name_the_true_modality_among_two() -> None:
    for modality in ("ct", "mri", "histopathology", "fundus"):
        samples = list(build_samples(_record(1, "x", modality), BuildContext(tasks=("vqa",))))
        open_q, choice = (next(_qa(s) for s in samples if s.provenance["variant"] == v)
                          for v in ("modality", "modality-choice"))
        assert open_q[1] == choice[1] == MODALITY_ANSWERS[modality]
        assert MODALITY_ANSWERS[modality].lower() in choice[0].lower() and " or " in choice[0]


def test_the_evaluation_sets_paraphrases_are_never_produced() -> None:
    """The bundled sets ask paraphrases no template makes, bare or varied (so evaluation uses questions
    training never saw)."""
    made = {t.format(x=x, m=m, a=a, b=b, A=a.capitalize())
            for t in FINDING_YES_NO + STATE_YES_NO + CLASS_CHOICES
            for x in ("pneumonia", "normal", "malignant", "benign")
            for m in ["chest X-ray", "ultrasound image"] + MODALITY_SYNONYMS["chest_xray"] + MODALITY_SYNONYMS["ultrasound"]
            for a, b in (("normal", "pneumonia"), ("pneumonia", "normal"), ("benign", "malignant"),
                         ("malignant", "benign"))}
    breast = BuildContext(tasks=("vqa",), label_set=("a malignant lesion", "a benign lesion"),
                          options={"class_names": {"a malignant lesion": "malignant", "a benign lesion": "benign"},
                                   "states": ["malignant", "benign"]})
    for i in range(600):
        for record, ctx in ((_record(i, ("pneumonia", "no pneumonia")[i % 2]), PNEUMONIA),
                            (_record(i, ("a malignant lesion", "a benign lesion")[i % 2], "ultrasound"), breast)):
            made |= {_qa(s)[0] for s in build_samples(record, ctx)}
    for name in ("cxr-pneumonia", "breast-ultrasound"):
        items = [json.loads(line) for line in (EVAL_SETS / name / "items.jsonl").read_text().splitlines()]
        unseen = {p for item in items for p in item.get("paraphrases", [])}
        assert unseen and not unseen & made, unseen & made


def test_closed_questions_come_varied_as_users_type_them() -> None:
    """About half of the closed questions carry a prefix, an answer-format suffix, lower case or a
    modality synonym; a question never gets two answer-format hints."""
    questions = [_qa(s)[0] for s in _samples(300) if s.provenance["variant"] in ("yesno", "yesno-other", "choice")]
    bare = {t.format(x=x, m="chest X-ray", a=a, b=b, A=a.capitalize()) for t in FINDING_YES_NO + STATE_YES_NO + CLASS_CHOICES
            for x in ("pneumonia", "normal") for a, b in (("normal", "pneumonia"), ("pneumonia", "normal"))}
    varied = [q for q in questions if q not in bare]
    assert 0.4 <= len(varied) / len(questions) <= 0.8
    assert any(q.endswith(tuple(YES_NO_SUFFIXES)) for q in varied)
    assert any(q.startswith(tuple(QUESTION_PREFIXES)) for q in varied)
    assert any(q == q.lower() for q in varied)
    assert any(name in q for q in varied for name in MODALITY_SYNONYMS["chest_xray"])
    hints = {"Answer yes or no.", "Answer with one word.", *YES_NO_SUFFIXES, *CHOICE_SUFFIXES}
    assert not any(sum(q.count(h) for h in hints) > 1 for q in questions)


def test_class_folders_leave_out_every_image_of_the_listed_patients(tmp_path: Path) -> None:
    for folder, names in {"NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "IM-0002-0001.jpeg"],
                          "PNEUMONIA": ["person7_bacteria_1.jpeg", "person7_virus_2.jpeg", "person8_virus_3.jpeg"]}.items():
        (tmp_path / "data" / folder).mkdir(parents=True)
        for name in names:
            (tmp_path / "data" / folder / name).write_bytes(b"")
    (tmp_path / "held-out.txt").write_text("IM-0001-0002.jpeg\nperson7_virus_2.jpeg\n")
    config = SourceConfig.from_dict({"name": "k", "adapter": "class_folder", "path": "data", "licence": "CC-BY-4.0",
                                     "modality": "chest_xray",
                                     "options": {"group_pattern": r"^((?:NORMAL2-)?IM-\d+|person\d+)",
                                                 "exclude_patients_of": "held-out.txt"}}, tmp_path, "test")
    assert ClassFolder(config).refs() == ["NORMAL/IM-0002-0001.jpeg", "PNEUMONIA/person8_virus_3.jpeg"]
    config = SourceConfig.from_dict({"name": "k", "adapter": "class_folder", "path": "data", "licence": "CC-BY-4.0",
                                     "modality": "chest_xray", "options": {"exclude_patients_of": "nowhere.txt"}},
                                    tmp_path, "test")
    with pytest.raises(RecordError, match="nowhere.txt not found"):
        ClassFolder(config).refs()


def test_questions_are_deterministic_per_record() -> None:
    first = [_qa(s) for s in build_samples(_record(3, "pneumonia"), PNEUMONIA)]
    assert first == [_qa(s) for s in build_samples(_record(3, "pneumonia"), PNEUMONIA)]
    random.seed(1)  # the global generator plays no part
    assert first == [_qa(s) for s in build_samples(_record(3, "pneumonia"), PNEUMONIA)]
