"""Task builders: records -> understanding, generation and interleaved samples.

Text made from labels by a template is marked `template_made=True`. Templates vary (several
phrasings per task, chosen by a generator seeded with the sample id), so a model trained on the
corpus sees plain questions ("What imaging modality is this?") and not one fixed wording.

Super-resolution degradation (documented, deterministic per sample): Gaussian blur with
sigma = factor / 2, bicubic down-sampling by factor 2 or 4, additive Gaussian noise with
sigma = 2 (on 0-255), rounded to uint8 and stored as PNG. The high-resolution original is the target.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

from unimedvl.data.schema import ImageRef, Item, Sample, sample_id
from unimedvl.data.sources.base import RawRecord, encode_png, pil_to_uint8

MODALITY_NAMES = {"chest_xray": "chest X-ray", "ct": "CT scan", "mri": "MRI scan", "ultrasound": "ultrasound image",
                  "histopathology": "histopathology image", "fundus": "fundus photograph", "oct": "retinal OCT scan",
                  "endoscopy": "endoscopy image", "other": "medical image"}
MODALITY_ANSWERS = {"chest_xray": "X-ray", "ct": "CT", "mri": "MRI", "ultrasound": "Ultrasound",
                    "histopathology": "Histopathology", "fundus": "Fundus photography", "oct": "OCT",
                    "endoscopy": "Endoscopy", "other": "Other"}
MODALITY_QUESTIONS = ["What imaging modality is this?", "Which modality was used to acquire this image?",
                      "What kind of medical image is this?", "Identify the imaging technique used here.",
                      "What type of scan is shown?"]
FINDING_QUESTIONS = ["What is the main finding in this {m}?", "What does this {m} show?", "What is the diagnosis?",
                     "Which abnormality, if any, is visible?", "Classify this {m}."]
YES_NO_QUESTIONS = ["Does this {m} show {label}?", "Is there evidence of {label} in this image?",
                    "Is {label} present?", "Would you describe this {m} as {label}?"]
CAPTION_PROMPTS = ["Describe this image.", "Write a short caption for this {m}.", "What do you see in this image?"]
CAPTION_ANSWERS = ["A {m} showing {label}.", "This {m} shows {label}.", "{M} with {label}."]
T2I_PROMPTS = ["A {m} with {label}.", "{M} showing {label}.", "Generate a {m} of {label}.",
               "Create a {m} that shows {label}.", "{label}, {m}."]
REPORT_PROMPTS = ["Write a radiology report for this chest X-ray.", "Describe the findings in this chest X-ray.",
                  "Provide the findings and impression for this image.", "Report on this radiograph."]
SEG_PROMPTS = ["Segment the {s} in this {m}.", "Outline the {s}.", "Produce a mask of the {s} in this image."]
SR_PROMPTS = ["Restore this {f}x down-sampled {m} to full resolution.", "Increase the resolution of this {m} {f} times.",
              "Super-resolve this low-resolution {m} (x{f})."]
PAIR_PROMPTS = {
    "virtual_staining": ["Convert this {a} image to a {b} stain.", "Virtually stain this {a} slide as {b}.",
                         "Generate the {b} image corresponding to this {a} image."],
    "cross_modal": ["Translate this {a} image to {b}.", "Synthesize the {b} image from this {a} image.",
                    "What would this look like as {b}? Generate it."],
    "counterfactual": ["Show this image as it would look with {finding}.", "Edit this {m} to show {finding}.",
                       "Generate a counterfactual of this image with {finding}."],
}


@dataclass(frozen=True)
class BuildContext:
    tasks: tuple[str, ...]
    label_set: tuple[str, ...] = ()
    repeat_index: int = 0
    options: dict | None = None


def _user(text: str) -> Item:
    return Item(kind="text", role="user", text=text)


def _answer(text: str) -> Item:
    return Item(kind="text", role="assistant", text=text, loss=True)


def _input_image(ref: ImageRef, use: str = "vit") -> Item:
    return Item(kind="image", role="user", image=ref, use=use)  # type: ignore[arg-type]


def _target_image(ref: ImageRef) -> Item:
    return Item(kind="image", role="assistant", image=ref, use="vae", loss=True)


def degrade(ref: ImageRef, factor: int, rng: random.Random) -> ImageRef:
    with Image.open(io.BytesIO(ref.data)) as img:
        image = pil_to_uint8(img).copy()
    image = image.filter(ImageFilter.GaussianBlur(radius=factor / 2))
    image = image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 2.0, array.shape)
    return encode_png(np.clip(array + noise + 0.5, 0, 255).astype(np.uint8))


def build_samples(record: RawRecord, ctx: BuildContext) -> Iterable[Sample]:
    """All samples the enabled tasks make from one record."""
    m = MODALITY_NAMES[record.modality]
    fill = {"m": m, "M": m[0].upper() + m[1:]}

    def make(task: str, variant: str, items: list[Item], template_made: bool) -> Sample:
        sid = sample_id(record.source, record.key, task, variant, ctx.repeat_index)
        return Sample(id=sid, task=task, modality=record.modality, source=record.source, licence=record.licence,
                      items=items, group=record.group, template_made=template_made,
                      provenance={**record.provenance, "record": record.key, "variant": variant,
                                  "official_split": record.official_split, "repeat": ctx.repeat_index})

    def rng_for(task: str, variant: str) -> random.Random:
        return random.Random(sample_id(record.source, record.key, task, variant, ctx.repeat_index, "rng"))

    image = record.images[0] if record.images else None
    tasks = set(ctx.tasks)
    label = record.label
    if "vqa" in tasks and image is not None:
        if record.question and record.answer:
            yield make("vqa", "qa", [_input_image(image), _user(record.question), _answer(record.answer)], False)
        r = rng_for("vqa", "modality")
        yield make("vqa", "modality", [_input_image(image), _user(r.choice(MODALITY_QUESTIONS).format(**fill)),
                                       _answer(MODALITY_ANSWERS[record.modality])], True)
        if label:
            r = rng_for("vqa", "finding")
            yield make("vqa", "finding", [_input_image(image), _user(r.choice(FINDING_QUESTIONS).format(**fill)),
                                          _answer(label[0].upper() + label[1:] + ".")], True)
            others = [x for x in ctx.label_set if x != label]
            if others:
                r = rng_for("vqa", "yesno")
                asked, truth = (label, "Yes.") if r.random() < 0.5 else (r.choice(others), "No.")
                yield make("vqa", "yesno", [_input_image(image), _user(r.choice(YES_NO_QUESTIONS).format(label=asked, **fill)),
                                            _answer(truth)], True)
    if "caption" in tasks and image is not None and (label or record.caption):
        r = rng_for("caption", "c")
        text = record.caption or r.choice(CAPTION_ANSWERS).format(label=label, **fill)
        yield make("caption", "c", [_input_image(image), _user(r.choice(CAPTION_PROMPTS).format(**fill)), _answer(text)],
                   record.caption is None)
    if "report" in tasks and image is not None and record.report:
        r = rng_for("report", "r")
        yield make("report", "r", [_input_image(image), _user(r.choice(REPORT_PROMPTS)), _answer(record.report)], False)
    if "text_to_image" in tasks and image is not None and (label or record.caption or record.report):
        r = rng_for("text_to_image", "t")
        if record.caption:
            prompt, made = record.caption, False
        elif record.report:
            prompt, made = f"A {m}. {record.report.split('Impression:')[-1].strip()}", False
        else:
            prompt, made = r.choice(T2I_PROMPTS).format(label=label, **fill), True
        yield make("text_to_image", "t", [_user(prompt[0].upper() + prompt[1:]), _target_image(image)], made)
    if "segmentation" in tasks and image is not None and record.mask is not None:
        r = rng_for("segmentation", "s")
        yield make("segmentation", "s", [_input_image(image, "vae+vit"),
                                         _user(r.choice(SEG_PROMPTS).format(s=record.mask_label, **fill)),
                                         _target_image(record.mask)], True)
    if "super_resolution" in tasks and image is not None:
        r = rng_for("super_resolution", "sr")
        factor = r.choice((2, 4))
        min_side = int((ctx.options or {}).get("sr_min_side", 64))
        if min(image.width, image.height) // factor >= max(16, min_side // factor):
            low = degrade(image, factor, r)
            yield make("super_resolution", f"x{factor}", [_input_image(low, "vae+vit"),
                                                           _user(r.choice(SR_PROMPTS).format(f=factor, **fill)),
                                                           _target_image(image)], True)
    pair_task = record.provenance.get("pair")
    if image is not None and record.target is not None and pair_task in tasks:
        opts = ctx.options or {}
        r = rng_for(pair_task, "p")
        names = {"a": opts.get("a_name", m), "b": opts.get("b_name", MODALITY_NAMES.get(record.target_modality or "", "target")),
                 "finding": label or "the finding", **fill}
        items = [_input_image(image, "vae+vit"), _user(r.choice(PAIR_PROMPTS[pair_task]).format(**names)),
                 _target_image(record.target)]
        if pair_task == "counterfactual":
            items.append(_answer(f"The edited image shows {names['finding']}; everything else is kept unchanged."))
        yield make(pair_task, "p", items, True)
