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
                      "What type of scan is shown?", "Name the modality of this image.",
                      "How was this image acquired?", "Modality?"]
MODALITY_CHOICES = ["Is this image {a} or {b}?", "Was this acquired with {a} or {b}?", "{A} or {b}: which is this?"]
FINDING_QUESTIONS = ["What is the main finding in this {m}?", "What does this {m} show?", "What is the diagnosis?",
                     "Which abnormality, if any, is visible?", "Classify this {m}.", "What is your diagnosis?"]
# Yes / no questions about a class name: findings ("Is there pneumonia?") and states ("Is this X-ray normal?").
# The bundled evaluation sets ask paraphrases that none of these produce (tests/data/test_tasks.py checks it).
FINDING_YES_NO = ["Does this {m} show {x}?", "Is there evidence of {x} in this image?", "Is {x} present?",
                  "Do you see {x} here?", "Is there {x}?", "Does the image show signs of {x}?",
                  "Can {x} be seen in this {m}?", "Is {x} seen on this {m}? Answer yes or no."]
STATE_YES_NO = ["Is this {m} {x}?", "Would you call this {m} {x}?", "Does this {m} look {x}?", "Is the image {x}?",
                "Would you describe this {m} as {x}? Answer yes or no.", "Is this {x}?"]
CLASS_CHOICES = ["Is this {m} {a} or {b}?", "Does this {m} show {a} or {b}?", "{A} or {b}?",
                 "Which is it, {a} or {b}?", "Is the finding {a} or {b}?", "Is this {a} or {b}? Answer with one word."]
# Surface variation of closed questions (half of them get one): users add "Yes or no?", start with "Question:",
# write "radiograph" for chest X-ray or type in lower case. None of these rebuilds an evaluation paraphrase.
YES_NO_SUFFIXES = ["Yes or no?", "Please answer yes or no.", "Reply with yes or no.", "Answer with yes or no.",
                   "Answer yes/no.", "Respond with Yes or No."]
CHOICE_SUFFIXES = ["Answer with one word.", "Choose one.", "Pick one of the two.", "Give the class name."]
QUESTION_PREFIXES = ["Question: ", "Look at the image. ", "Based on this image, ", "Looking at the image, ",
                     "Q: ", "From the image: "]
MODALITY_SYNONYMS = {"chest_xray": ["chest radiograph", "X-ray", "CXR", "chest film", "X-ray image"],
                     "ultrasound": ["ultrasound", "sonogram", "ultrasound scan", "US image"],
                     "mri": ["MRI", "MR image", "magnetic resonance image"], "ct": ["CT image", "CT", "CT slice"],
                     "histopathology": ["slide", "pathology image", "H&E image"],
                     "fundus": ["retinal photograph", "fundus image"], "oct": ["OCT scan", "OCT image"],
                     "endoscopy": ["endoscopic image", "colonoscopy image"], "other": ["image"]}
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


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def varied_fill(modality: str, fill: dict, rng: random.Random) -> dict:
    """`fill` with the modality named by a synonym a third of the time ("radiograph" for chest X-ray)."""
    if rng.random() >= 1 / 3:
        return fill
    name = rng.choice(MODALITY_SYNONYMS[modality])
    return {**fill, "m": name, "M": _capital(name)}


def vary_question(question: str, rng: random.Random, suffixes: list[str] | None = None) -> str:
    """A closed question as users type it: half are kept, the others get one of a prefix, a suffix
    from `suffixes` (answer-format hints; none when omitted, nor on a question that already ends in
    one, i.e. in ".") or lower case. Independent of the answer, so a phrasing balanced in yes / no
    stays balanced."""
    hints = suffixes if suffixes and not question.endswith(".") else None
    kinds = ["prefix", "lower"] + (["suffix", "suffix"] if hints else [])
    if rng.random() < 0.5:
        return question
    kind = rng.choice(kinds)
    if kind == "suffix" and hints:
        return f"{question} {rng.choice(hints)}"
    if kind == "lower":
        return question.lower()
    prefix = rng.choice(QUESTION_PREFIXES)
    # "Based on this image, is there ...": a prefix ending in a comma continues the sentence.
    return prefix + (question[0].lower() + question[1:] if prefix.endswith(", ") else question)


def class_names(ctx: BuildContext) -> dict[str, str]:
    """Label -> the short class name questions use (`options.class_names`; default: the label itself)."""
    names = (ctx.options or {}).get("class_names") or {}
    return {label: str(names.get(label, label)) for label in ctx.label_set}


def _modality_questions(record: RawRecord, image: ImageRef, fill: dict, make, rng_for) -> Iterable[Sample]:  # noqa: ANN001
    """An open modality question, and a choice between the true modality and another one."""
    answer = MODALITY_ANSWERS[record.modality]
    r = rng_for("vqa", "modality")
    question = vary_question(r.choice(MODALITY_QUESTIONS).format(**fill), r)
    yield make("vqa", "modality", [_input_image(image), _user(question), _answer(answer)], True)
    r = rng_for("vqa", "modality-choice")
    other = r.choice([MODALITY_ANSWERS[m] for m in MODALITY_ANSWERS if m not in (record.modality, "other")])
    a, b = (answer, other) if r.random() < 0.5 else (other, answer)
    question = vary_question(r.choice(MODALITY_CHOICES).format(a=a, b=b, A=_capital(a)), r, CHOICE_SUFFIXES)
    yield make("vqa", "modality-choice", [_input_image(image), _user(question), _answer(answer)], True)


def _class_questions(record: RawRecord, image: ImageRef, ctx: BuildContext, fill: dict, make, rng_for  # noqa: ANN001
                     ) -> Iterable[Sample]:
    """Questions that only the image can answer: every record is asked one yes / no question about its own
    class (answer "Yes.") and one about another class (answer "No."), each in a phrasing drawn at random, so
    that every phrasing is answered yes and no equally often given balanced classes (the trainer's
    `data.label_balance`); and a choice between its class and another one, answered with the class name.
    Class names listed in `options.states` are asked as states ("Is this chest X-ray normal?"), the others
    as findings ("Is there pneumonia?")."""
    names = class_names(ctx)
    own = names.get(record.label or "")
    others = sorted({n for n in names.values() if n != own})
    if own is None or not others:
        return
    states = set((ctx.options or {}).get("states") or ())
    for variant, asked, truth in (("yesno", own, "Yes."), ("yesno-other", None, "No.")):
        r = rng_for("vqa", variant)
        asked = asked or r.choice(others)
        template = r.choice(STATE_YES_NO if asked in states else FINDING_YES_NO)
        question = vary_question(template.format(x=asked, **varied_fill(record.modality, fill, r)), r, YES_NO_SUFFIXES)
        yield make("vqa", variant, [_input_image(image), _user(question), _answer(truth)], True)
    r = rng_for("vqa", "choice")
    other = r.choice(others)
    a, b = (own, other) if r.random() < 0.5 else (other, own)
    question = r.choice(CLASS_CHOICES).format(a=a, b=b, A=_capital(a), **varied_fill(record.modality, fill, r))
    question = vary_question(question, r, CHOICE_SUFFIXES)
    yield make("vqa", "choice", [_input_image(image), _user(question), _answer(_capital(own) + ".")], True)


def build_samples(record: RawRecord, ctx: BuildContext) -> Iterable[Sample]:
    """All samples the enabled tasks make from one record."""
    m = MODALITY_NAMES[record.modality]
    fill = {"m": m, "M": m[0].upper() + m[1:]}

    def make(task: str, variant: str, items: list[Item], template_made: bool) -> Sample:
        sid = sample_id(record.source, record.key, task, variant, ctx.repeat_index)
        return Sample(id=sid, task=task, modality=record.modality, source=record.source, licence=record.licence,
                      items=items, group=record.group, template_made=template_made,
                      provenance={**record.provenance, "record": record.key, "variant": variant, "label": record.label,
                                  "official_split": record.official_split, "repeat": ctx.repeat_index})

    def rng_for(task: str, variant: str) -> random.Random:
        return random.Random(sample_id(record.source, record.key, task, variant, ctx.repeat_index, "rng"))

    image = record.images[0] if record.images else None
    tasks = set(ctx.tasks)
    label = record.label
    if "vqa" in tasks and image is not None:
        if record.question and record.answer:
            yield make("vqa", "qa", [_input_image(image), _user(record.question), _answer(record.answer)], False)
        yield from _modality_questions(record, image, fill, make, rng_for)
        if label:
            r = rng_for("vqa", "finding")
            yield make("vqa", "finding", [_input_image(image), _user(r.choice(FINDING_QUESTIONS).format(**fill)),
                                          _answer(label[0].upper() + label[1:] + ".")], True)
            yield from _class_questions(record, image, ctx, fill, make, rng_for)
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
        factor = r.choice(tuple(int(f) for f in (ctx.options or {}).get("sr_factors", (2, 4))))
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
