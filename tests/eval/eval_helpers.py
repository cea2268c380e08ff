"""Synthetic benchmarks and stub models for the harness tests: the answer is in the image, or nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from http_helpers import reply_json, serving  # noqa: F401 - shared by the tests that import them from here
from PIL import Image

from unimedvl.eval.benchmarks import bundled
from unimedvl.eval.benchmarks.base import Benchmark
from unimedvl.eval.predictors import Request


def write_bright_dark_set(folder: Path, n: int = 12) -> Benchmark:
    """n real-looking textured images, half bright and half dark; "Is this image bright?" with paraphrases and a flip."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        bright = i % 2 == 0
        base = 200 if bright else 50
        pixels = np.clip(base + rng.normal(0, 20, (48, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"img{i:02d}", "question": "Is this image bright?", "answer": "yes" if bright else "no",
                                 "kind": "closed", "image": f"images/{i}.png", "groups": {"label": "bright" if bright else "dark"},
                                 "paraphrases": ["Would you call this image bright?", "Is the image bright? Answer yes or no."],
                                 "flipped": "Is this image dark?"}))
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return Benchmark("bright", "Bright or dark", bundled.load, "items.jsonl", bundled=folder)


class LooksAtTheImage:
    """Answers from the pixels: bright (mean > 140) or not, inverted when asked whether it is dark."""

    name = "looks"

    def predict(self, requests: list[Request]) -> list[str]:
        out = []
        for r in requests:
            bright = float(np.asarray(r.image.convert("L")).mean()) > 140
            out.append("Yes." if bright != ("dark" in r.prompt) else "No.")
        return out


class TextOnly:
    """Answers from the wording alone, as v1 did: "yes" to short questions, "no" once asked to answer yes or no."""

    name = "text-only"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, requests: list[Request]) -> list[str]:
        self.calls += len(requests)
        return ["No." if "yes or no" in r.prompt or "call" in r.prompt else "Yes." for r in requests]


def table_row(text: str, *cells: str) -> list[str]:
    """The cells of the one table row that starts with these cells."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    found = [r for r in rows if r[:len(cells)] == list(cells)]
    assert len(found) == 1, (cells, text)
    return found[0]
