"""Stage 1: coarse filters on each sample, and the global duplicate / leakage checks.

Per sample (in the worker that builds it): every image decodes; sides within limits and aspect ratio
bounded; not blank or near-constant (grey-level std); each text within length limits, mostly in the
expected script (Latin letters for English), not garbage (long character runs, mostly symbols).
Also computed: sha256 of each image (exact duplicates) and a 256-bit difference hash of the first
image (perceptual near-duplicates, compared globally by Hamming distance). 256 bits, not the usual
64: on small, homogeneous medical images (28 px chest X-rays) most distinct 64-bit hashes lie within
4 bits of another, while 256-bit hashes of distinct images differ in 20+ bits and re-encodings in ~0.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from unimedvl.data.schema import Sample
from unimedvl.data.sources.base import pil_to_uint8


@dataclass(frozen=True)
class CoarseLimits:
    min_side: int = 28
    max_side: int = 8192
    max_aspect: float = 6.0
    min_std: float = 2.0  # grey levels (0-255)
    min_text_chars: int = 1
    max_text_chars: int = 4000
    min_latin_ratio: float = 0.8
    max_symbol_ratio: float = 0.5
    max_char_run: int = 20
    near_duplicate_bits: int = 10  # of 256


HASH_BITS = 256


def dhash(image: Image.Image, size: int = 16) -> int:
    """size*size-bit difference hash of a grey, (size+1) x size thumbnail."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def check_text(text: str, limits: CoarseLimits) -> str | None:
    stripped = text.strip()
    if len(stripped) < limits.min_text_chars:
        return "text_empty"
    if len(stripped) > limits.max_text_chars:
        return "text_too_long"
    letters = [c for c in stripped if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < limits.min_latin_ratio:
        return "text_language"
    if re.search(r"(.)\1{%d,}" % (limits.max_char_run - 1), stripped):
        return "text_garbage"
    if len(stripped) >= 8 and sum(not (c.isalnum() or c.isspace()) for c in stripped) / len(stripped) > limits.max_symbol_ratio:
        return "text_garbage"
    return None


def check_sample(sample: Sample, limits: CoarseLimits) -> tuple[list[str], dict]:
    """Returns (reasons it fails, metrics). Metrics hold image hashes and simple statistics."""
    reasons: list[str] = []
    metrics: dict = {"image_sha256": [img.sha256 for img in sample.images()]}
    for index, ref in enumerate(sample.images()):
        try:
            with Image.open(io.BytesIO(ref.data)) as img:
                img.load()
                rgb = pil_to_uint8(img)
                grey = np.asarray(rgb.convert("L"), dtype=np.float32)
                if index == 0:
                    metrics["dhash"] = dhash(rgb)
                    metrics["std"] = float(grey.std())
                    arr = np.asarray(rgb.convert("RGB"), dtype=np.int16)
                    metrics["colour"] = float(np.abs(arr[..., 0] - arr[..., 1]).mean() + np.abs(arr[..., 1] - arr[..., 2]).mean())
        except (OSError, SyntaxError, ValueError):
            reasons.append("image_corrupt")
            continue
        w, h = ref.width, ref.height
        if min(w, h) < limits.min_side:
            reasons.append("image_too_small")
        if max(w, h) > limits.max_side:
            reasons.append("image_too_large")
        if max(w, h) / max(1, min(w, h)) > limits.max_aspect:
            reasons.append("image_aspect")
        if grey.std() < limits.min_std and not (sample.task == "segmentation" and index == len(sample.images()) - 1):
            reasons.append("image_blank")
    for text in sample.texts():
        problem = check_text(text, limits)
        if problem:
            reasons.append(problem)
    metrics["text_chars"] = sum(len(t) for t in sample.texts())
    return sorted(set(reasons)), metrics


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicate_pairs(hashes: list[tuple[int, int]], max_bits: int) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, whose HASH_BITS-bit hashes differ in at most `max_bits` bits.

    Band index: split each hash into max_bits + 1 bands; two hashes within max_bits bits share at
    least one band exactly (pigeonhole), so only bucket-mates are compared.
    """
    bands = max_bits + 1
    width = HASH_BITS // bands
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, (_, h) in enumerate(hashes):
        for band in range(bands):
            shift = band * width
            mask_width = HASH_BITS - shift if band == bands - 1 else width
            key = (band, (h >> shift) & ((1 << mask_width) - 1))
            buckets.setdefault(key, []).append(index)
    pairs = set()
    for members in buckets.values():
        if len(members) < 2 or len(members) > 5000:  # pathological buckets (e.g. blank images) are skipped
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if hamming(hashes[i][1], hashes[j][1]) <= max_bits:
                    pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)
