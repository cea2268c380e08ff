"""Stage-2 data distillation: chain-of-thought answers and caption-augmented generation prompts from a teacher.

    unimedvl data transform IN_CORPUS --out OUT_CORPUS --teacher labels|local:DIR|openai:URL#MODEL
                            [--cot] [--captions] [--fraction 0.5]

* Chain-of-thought: an understanding sample's answer becomes `<think> reasoning </think> answer`,
  after the reference's reasoning system prompt (a system text item, no loss), as UniMedVL's think
  mode expects.
* Caption augmentation: a text-to-image prompt is enriched with a caption of the target image.

Teachers are pluggable: an OpenAI-compatible endpoint (answers cached on disk), a local UniMedVL
model (loaded by the caller and passed in: the data package never imports the engine), or
`labels` - reasoning and captions written from the labels by templates, which is
allowed for the bundled data and marked (`template_made`, `provenance.teacher = "labels"`).
A deterministic `fraction` of the eligible samples is transformed; originals are kept, so the
output corpus holds both. The output is a corpus in the same schema, with its own manifest.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Protocol

from unimedvl.data.manifest import Manifest
from unimedvl.data.schema import Item, Sample, sample_id
from unimedvl.data.storage import ShardWriter, iter_samples
from unimedvl.data.tasks import MODALITY_NAMES
from unimedvl.errors import ConfigError
from unimedvl.text.prompts import VLM_THINK_SYSTEM_PROMPT

COT_SYSTEM = ("You are a senior radiologist and pathologist writing teaching material for a medical vision-language "
              "model. Given a question about one medical image and its correct answer, write the reasoning (2 to 4 "
              "sentences) that leads from what is visible in the image to that answer. Do not contradict the answer, do "
              "not invent findings, do not start with the answer itself. Reply with the reasoning only.")
CAPTION_SYSTEM = ("Rewrite this request for a medical image into a factual one- or two-sentence caption of the image: "
                  "modality, view or plane, anatomy and the finding. Add no finding that the request does not state. "
                  "Reply with the caption only.")


class Teacher(Protocol):
    name: str
    template_made: bool

    def reasoning(self, sample: Sample, question: str, answer: str) -> str | None: ...

    def caption(self, sample: Sample, prompt: str) -> str | None: ...


class LabelTeacher:
    """Reasoning and captions from the labels, by templates (for data without a teacher model)."""

    name = "labels"
    template_made = True

    def reasoning(self, sample: Sample, question: str, answer: str) -> str | None:
        m = MODALITY_NAMES[sample.modality]
        return (f"The image is a {m}. The question asks: \"{question.strip()}\" "
                f"Reading the image with that question in mind, the appearance is consistent with: {answer.strip().rstrip('.')}.")

    def caption(self, sample: Sample, prompt: str) -> str | None:
        return f"A {MODALITY_NAMES[sample.modality]} ({sample.source}); requested content: {prompt.strip().rstrip('.')}."


class EndpointTeacher:
    """A teacher LLM behind an OpenAI-compatible endpoint (text only), cached on disk."""

    template_made = False

    def __init__(self, endpoint: str, model: str, cache_path: Path, api_key: str | None = None) -> None:
        from unimedvl.data.llm_client import CachedChatClient

        self.name = f"endpoint:{model}"
        self.client = CachedChatClient(endpoint, model, cache_path, api_key=api_key)

    def reasoning(self, sample: Sample, question: str, answer: str) -> str | None:
        user = f"Modality: {MODALITY_NAMES[sample.modality]}\nQuestion: {question}\nCorrect answer: {answer}"
        reply = self.client.complete(COT_SYSTEM, user, accept=lambda c: bool(c.strip()) and "<think>" not in c)
        return None if reply is None else reply.strip()

    def caption(self, sample: Sample, prompt: str) -> str | None:
        reply = self.client.complete(CAPTION_SYSTEM, prompt, accept=lambda c: bool(c.strip()))
        return None if reply is None else reply.strip()


class Asker(Protocol):
    """What a local teacher needs of a model: `UniMedVL.ask` (the caller loads it)."""

    def ask(self, images: list, question: str, *, max_new_tokens: int) -> Any: ...


class LocalModelTeacher:
    """A local UniMedVL model that sees the image (greedy decoding)."""

    template_made = False

    def __init__(self, model: Asker, name: str, max_new_tokens: int = 96) -> None:
        self.name = f"local:{name}"
        self.engine = model
        self.max_new_tokens = max_new_tokens

    def _image(self, sample: Sample):  # noqa: ANN202
        from PIL import Image

        return Image.open(io.BytesIO(sample.images()[0].data))

    def reasoning(self, sample: Sample, question: str, answer: str) -> str | None:
        prompt = f"{question}\nThe correct answer is: {answer}. Explain step by step how the image shows this."
        text = self.engine.ask([self._image(sample)], prompt, max_new_tokens=self.max_new_tokens).text.strip()
        return text or None

    def caption(self, sample: Sample, prompt: str) -> str | None:
        images = [it.image for it in sample.items if it.loss and it.image is not None]
        if not images:
            return None
        from PIL import Image

        text = self.engine.ask([Image.open(io.BytesIO(images[0].data))], "Describe this medical image in one sentence.",
                               max_new_tokens=self.max_new_tokens).text.strip()
        return text or None


def make_teacher(spec: str, work_dir: Path, *, load_local: Callable[[str], Asker] | None = None) -> Teacher:
    """`labels`, `local:DIR` (needs `load_local`, which loads the model in DIR) or `openai:URL#MODEL`."""
    if spec == "labels":
        return LabelTeacher()
    if spec.startswith("local:"):
        folder = spec.removeprefix("local:")
        if load_local is None:
            raise ConfigError("a local teacher needs a model loader (the CLI passes one)")
        return LocalModelTeacher(load_local(folder), Path(folder).name)
    if spec.startswith("openai:"):
        endpoint, _, model = spec.removeprefix("openai:").partition("#")
        if not endpoint or not model:
            raise ConfigError("an endpoint teacher looks like openai:http://host:port/v1#model-name")
        import os

        return EndpointTeacher(endpoint, model, work_dir / "teacher_cache.sqlite", api_key=os.environ.get("OPENAI_API_KEY"))
    raise ConfigError(f"unknown teacher {spec!r}; use labels, local:DIR or openai:URL#MODEL")


def _chosen(sample_id_: str, fraction: float, salt: str) -> bool:
    return int(hashlib.sha256(f"{salt}\x1f{sample_id_}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def with_reasoning(sample: Sample, teacher: Teacher) -> Sample | None:
    texts = [i for i, it in enumerate(sample.items) if it.kind == "text"]
    answers = [i for i in texts if sample.items[i].loss]
    questions = [i for i in texts if not sample.items[i].loss]
    if sample.family != "understanding" or len(answers) != 1 or not questions:
        return None
    question, answer = sample.items[questions[-1]].text or "", sample.items[answers[0]].text or ""
    reasoning = teacher.reasoning(sample, question, answer)
    if not reasoning:
        return None
    items = [Item(kind="text", role="system", text=VLM_THINK_SYSTEM_PROMPT)] + list(sample.items)
    items[answers[0] + 1] = replace(sample.items[answers[0]], text=f"<think> {reasoning} </think> {answer}")
    return replace(sample, id=sample_id(sample.id, "cot", teacher.name), items=items,
                   template_made=sample.template_made or teacher.template_made,
                   provenance={**sample.provenance, "transform": "chain_of_thought", "teacher": teacher.name, "from": sample.id})


def with_caption(sample: Sample, teacher: Teacher) -> Sample | None:
    if sample.task != "text_to_image":
        return None
    index = next(i for i, it in enumerate(sample.items) if it.kind == "text")
    prompt = sample.items[index].text or ""
    caption = teacher.caption(sample, prompt)
    if not caption:
        return None
    items = list(sample.items)
    items[index] = replace(items[index], text=f"{prompt}\n{caption}")
    return replace(sample, id=sample_id(sample.id, "caption", teacher.name), items=items,
                   template_made=sample.template_made or teacher.template_made,
                   provenance={**sample.provenance, "transform": "caption_augmented", "teacher": teacher.name,
                               "from": sample.id})


def transform_corpus(source: str | Path, out: str | Path, teacher: Teacher, *, cot: bool = True,
                     captions: bool = True, fraction: float = 0.5, shard_rows: int = 5000, seed: int = 0) -> Manifest:
    """A new corpus in `out`: every sample of `source`, plus the transformed copies of a chosen fraction."""
    source, out = Path(source), Path(out)
    original = Manifest.read(source)
    if not 0 < fraction <= 1:
        raise ConfigError("fraction must be in (0, 1]")
    writer = ShardWriter(out, shard_rows)
    transformed: Counter = Counter()
    failures: Counter = Counter()
    splits = sorted(p.name for p in (source / "data").iterdir() if p.is_dir())
    for split in splits:
        for sample in iter_samples(source, split):
            outputs = [sample]
            if _chosen(sample.id, fraction, f"{seed}"):
                for enabled, make, name in ((cot, with_reasoning, "chain_of_thought"), (captions, with_caption, "caption_augmented")):
                    if not enabled:
                        continue
                    eligible = (sample.family == "understanding") if make is with_reasoning else (sample.task == "text_to_image")
                    if not eligible:
                        continue
                    made = make(sample, teacher)
                    if made is None:
                        failures[name] += 1
                    else:
                        outputs.append(made)
                        transformed[name] += 1
            for s in outputs:
                writer.add(s.to_row())
    shards = writer.close()
    manifest = Manifest(schema=original.schema, name=f"{original.name}+stage2", total=sum(s.rows for s in shards),
                        counts={**writer.sorted_counts(), "transform": dict(sorted(transformed.items()))},
                        shards=shards, origin={"derived_from": str(source), "teacher": teacher.name,
                                               "fraction": fraction, "teacher_failures": dict(failures)})
    manifest.write(out)
    return manifest
