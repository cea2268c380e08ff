"""Stage-2 transforms: chain-of-thought and caption augmentation from label, endpoint and local teachers."""

from __future__ import annotations

import json
from pathlib import Path

from data_helpers import plan_kinds
from test_qc import FakeJudge, judge_url  # noqa: F401  (the local OpenAI-compatible stand-in)

from unimedvl.assets import REFERENCE_TINY
from unimedvl.cli import main
from unimedvl.data.distillation import EndpointTeacher, LocalModelTeacher, with_caption, with_reasoning
from unimedvl.data.storage import iter_samples
from unimedvl.text.prompts import VLM_THINK_SYSTEM_PROMPT


def test_label_teacher_corpus(sample_corpus, tmp_path: Path) -> None:
    corpus, _ = sample_corpus
    out = tmp_path / "stage2"
    assert main(["data", "transform", str(corpus), "--out", str(out), "--fraction", "0.05"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["transform"]["chain_of_thought"] > 100
    assert manifest["counts"]["transform"]["caption_augmented"] > 50
    cot = next(s for s in iter_samples(out, "val") if s.provenance.get("transform") == "chain_of_thought")
    assert cot.items[0].role == "system" and cot.items[0].text == VLM_THINK_SYSTEM_PROMPT
    answer = cot.items[-1].text
    assert answer.startswith("<think> ") and " </think> " in answer and cot.template_made
    assert cot.provenance["teacher"] == "labels" and plan_kinds(cot)[0] == ("text", False)
    original = manifest["counts"]["task"]["vqa"]
    assert original > manifest["counts"]["transform"]["chain_of_thought"]  # originals kept


def test_endpoint_teacher_is_cached(sample_corpus, tmp_path: Path, judge_url: str) -> None:  # noqa: F811
    corpus, _ = sample_corpus
    teacher = EndpointTeacher(judge_url, "teacher-model", tmp_path / "cache.sqlite")
    sample = next(s for s in iter_samples(corpus, "val") if s.task == "vqa")
    made = with_reasoning(sample, teacher)
    assert made is not None and "rubric" in made.items[-1].text and FakeJudge.requests
    asked = len(FakeJudge.requests)
    again = EndpointTeacher(judge_url, "teacher-model", tmp_path / "cache.sqlite")
    assert with_reasoning(sample, again).items[-1].text == made.items[-1].text
    assert len(FakeJudge.requests) == asked  # answered from the cache
    assert made.template_made == sample.template_made and made.provenance["teacher"] == "endpoint:teacher-model"


def test_local_model_teacher_sees_the_image(sample_corpus) -> None:
    corpus, _ = sample_corpus
    from unimedvl.inference.engine import UniMedVL

    teacher = LocalModelTeacher(UniMedVL.from_pretrained(REFERENCE_TINY), "reference-tiny", max_new_tokens=4)
    t2i = next(s for s in iter_samples(corpus, "val") if s.task == "text_to_image")
    made = with_caption(t2i, teacher)
    assert made is not None and made.items[0].text.startswith(t2i.items[0].text + "\n")
    assert made.id != t2i.id and made.provenance["from"] == t2i.id
