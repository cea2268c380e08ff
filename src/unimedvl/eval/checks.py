"""Checks that show whether a model looks at the image, reported beside accuracy for every benchmark.

* image dependence: every question again with the image replaced by a blank (mid-grey) and by a
  noise image of the same size. A model that uses the image loses accuracy; the drop is tested
  with an exact one-sided McNemar (sign) test on the items whose outcome changed.
* phrasing consistency: each yes / no question also asked in paraphrases, and with the polarity
  flipped where a rule (or the bundled set) gives the flipped question; an item is consistent when
  every phrasing gives the same verdict (flipped ones inverted). Reported: agreement rate and
  accuracy per phrasing.
* resolution robustness: the same images downsampled (half size, and 28 px on the short side, the
  MedMNIST size) against their native size; each size must beat the blank image.

Each check turns the benchmark's items into variant items (`variants`), which the runner answers
like any other item; `summarise` turns the scored variants into the check's numbers and verdict.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from PIL import Image

from unimedvl.eval.benchmarks.base import EvalItem
from unimedvl.eval.scoring import normalise

CHECKS = ("image_dependence", "phrasing", "resolution")
PARAPHRASES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("answer yes or no", lambda q: f"{q} Answer yes or no."),
    ("looking at the image", lambda q: f"Looking at this image: {q[:1].lower()}{q[1:]}"),
)
_FLIP_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(Is|Are) there (?:an? |any )?(.+)\?$", re.IGNORECASE), r"\1 there no \2?"),
    (re.compile(r"^(.*)\bnormal\b(.*)\?$", re.IGNORECASE), r"\1abnormal\2?"),
    (re.compile(r"^(.*)\babnormal\b(.*)\?$", re.IGNORECASE), r"\1normal\2?"),
    (re.compile(r"^(Does|Do) (.+?) (show|contain|have|depict) (?:an? |any )?(.+)\?$", re.IGNORECASE), r"\1 \2 \3 no \4?"),
)


def flipped_question(question: str) -> str | None:
    """The same yes / no question with its polarity flipped, where a rule applies (else None)."""
    for pattern, replacement in _FLIP_RULES:
        if pattern.match(question):
            return pattern.sub(replacement, question)
    return None


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _open(item: EvalItem) -> Image.Image:
    return Image.open(io.BytesIO(item.image_bytes())).convert("RGB")


def blank_image(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def noise_image(size: tuple[int, int], seed: str) -> Image.Image:
    """Uniform RGB noise, seeded by `seed` (the item id): the same image on every run and machine."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _downsample(image: Image.Image, short_side: int) -> Image.Image:
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)


def _variant(item: EvalItem, check: str, name: str, **changes: object) -> EvalItem:
    groups = {**item.groups, "check": check, "variant": name, "of": item.id}
    return replace(item, id=f"{item.id}#{check}:{name}", groups=groups, **changes)  # type: ignore[arg-type]


def is_yes_no(item: EvalItem) -> bool:
    return item.kind == "closed" and normalise(item.answer) in ("yes", "no")


def variants(check: str, items: list[EvalItem]) -> list[EvalItem]:
    """The variant items one check asks (their ids say what they are: `<id>#<check>:<variant>`)."""
    out: list[EvalItem] = []
    for item in items:
        if check == "image_dependence":
            size = _open(item).size
            out.append(_variant(item, check, "blank", image=_png(blank_image(size))))
            out.append(_variant(item, check, "noise", image=_png(noise_image(size, item.id))))
        elif check == "resolution":
            image = _open(item)
            half = _downsample(image, max(1, min(image.size) // 2))
            out.append(_variant(item, check, "half", image=_png(half)))
            out.append(_variant(item, check, "28px", image=_png(_downsample(image, 28))))
        elif check == "phrasing" and is_yes_no(item):
            phrasings = [(f"paraphrase {i + 1}", text) for i, text in enumerate(item.paraphrases)] if item.paraphrases \
                else [(name, make(item.question)) for name, make in PARAPHRASES]
            for name, text in phrasings:
                out.append(_variant(item, check, name, question=text))
            flipped = item.flipped or flipped_question(item.question)
            if flipped:
                answer = "no" if normalise(item.answer) == "yes" else "yes"
                out.append(_variant(item, check, "flipped", question=flipped, answer=answer))
    return out


# ------------------------------------------------------------------ statistics
def sign_test_p(better: int, worse: int) -> float:
    """One-sided exact McNemar test: P(at least `better` of `better + worse` discordant pairs favour the real image)."""
    n = better + worse
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(better, n + 1)) / 2**n


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95 % Wilson score interval `[low, high]` of a proportion (None for n = 0).

    Held-out sets here are small (78 breast images, 32 seeds per modality), so a rate is reported with the
    range it could have come from; unlike the normal approximation it stays inside [0, 1] at 0 or n successes.
    """
    if n <= 0:
        return None
    rate, spread = successes / n, z * z / n
    centre = (rate + spread / 2) / (1 + spread)
    half = z * math.sqrt(rate * (1 - rate) / n + spread / (4 * n)) / (1 + spread)
    return [max(0.0, centre - half), min(1.0, centre + half)]


@dataclass(frozen=True)
class Outcome:
    """One answered item: its id, the original item's id, the variant, whether it was right, and its yes/no verdict."""

    id: str
    of: str
    variant: str
    correct: bool
    verdict: str | None = None  # "yes" / "no" / None (for phrasing)


def _accuracy(rows: list[Outcome]) -> float | None:
    return sum(r.correct for r in rows) / len(rows) if rows else None


def summarise_image_dependence(base: dict[str, bool], rows: list[Outcome]) -> dict:
    out: dict[str, object] = {"n": len(base), "accuracy": _accuracy([Outcome(k, k, "real", v) for k, v in base.items()])}
    verdict = True
    for name in ("blank", "noise"):
        mine = [r for r in rows if r.variant == name and r.of in base]
        better = sum(base[r.of] and not r.correct for r in mine)
        worse = sum(r.correct and not base[r.of] for r in mine)
        p = sign_test_p(better, worse)
        out[name] = {"accuracy": _accuracy(mine), "real_only_right": better, "variant_only_right": worse, "p": p}
        verdict &= bool(mine) and better > worse and p < 0.05
    out["passed"] = verdict
    out["rule"] = "accuracy with the real image above both blank and noise images (one-sided McNemar p < 0.05)"
    return out


def summarise_phrasing(base: dict[str, Outcome], rows: list[Outcome]) -> dict:
    by_item: dict[str, list[Outcome]] = {}
    for r in rows:
        if r.of in base:
            by_item.setdefault(r.of, []).append(r)
    consistent = 0
    for item_id, mine in by_item.items():
        verdicts = [base[item_id].verdict] + [
            ({"yes": "no", "no": "yes"}.get(r.verdict or "") if r.variant == "flipped" else r.verdict) for r in mine]
        consistent += None not in verdicts and len(set(verdicts)) == 1
    names = sorted({r.variant for r in rows})
    per = {"original": _accuracy([base[i] for i in by_item])}
    per.update({name: _accuracy([r for r in rows if r.variant == name]) for name in names})
    agreement = consistent / len(by_item) if by_item else None
    # Answers that say neither yes nor no ("Pneumonia." to "Is pneumonia visible?"): a wrong answer format,
    # not a wrong reading of the image; counted apart so the two failures are not confused.
    off_format = {"original": sum(base[i].verdict is None for i in by_item)}
    off_format.update({name: sum(r.verdict is None for r in rows if r.variant == name) for name in names})
    return {"n": len(by_item), "agreement": agreement, "accuracy_per_phrasing": per, "not_yes_no": off_format,
            "flipped": sum(r.variant == "flipped" for r in rows),
            "passed": agreement is not None and agreement >= 0.9,
            "rule": "the same verdict under every phrasing (flipped polarity inverted) on at least 90% of items"}


def summarise_resolution(base: dict[str, bool], rows: list[Outcome], blank: list[Outcome]) -> dict:
    out: dict[str, object] = {"n": len(base), "native": _accuracy([Outcome(k, k, "native", v) for k, v in base.items()])}
    blank_right = {r.of: r.correct for r in blank if r.variant == "blank"}
    verdict = bool(blank_right)
    for name in ("half", "28px"):
        mine = [r for r in rows if r.variant == name and r.of in blank_right]
        better = sum(r.correct and not blank_right[r.of] for r in mine)
        worse = sum(blank_right[r.of] and not r.correct for r in mine)
        p = sign_test_p(better, worse)
        out[name] = {"accuracy": _accuracy([r for r in rows if r.variant == name]), "p_vs_blank": p}
        verdict &= bool(mine) and better > worse and p < 0.05
    out["passed"] = verdict
    out["rule"] = "every downsampled size above the blank image (one-sided McNemar p < 0.05)"
    return out
