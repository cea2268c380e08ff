"""A modality evaluation set from a built corpus' held-out split, at every modality the corpus has (not shipped).

    .venv/bin/python scripts/build_local_modality_set.py --corpus DIR --out DIR [--per-modality 20] [--split test]
    .venv/bin/unimedvl eval modality --data OUT -c CHECKPOINT

The bundled `modality` set holds only redistributable images (chest X-ray, breast ultrasound and three MSD
slices: 43 images, 2 of them MRI). A corpus built from research-use sets (those `recipes/unimedvl-tiny/corpus.yaml`
names) holds held-out images of every modality; this writes up to N of them per
modality, spread over the sources in turn (seeded), as stored in the corpus (their native size, PNG without
loss), each asked "What imaging modality is this?" (a training question) and "Which imaging technique produced
this picture?" (a wording no training template makes), answered as the corpus' templates answer it. The
images inherit their sets' licences: keep the output local.
"""

from __future__ import annotations

import argparse
import io
import random
from collections import defaultdict
from pathlib import Path

from build_eval_sets import _write, closed  # scripts/ is on the path when this script runs
from PIL import Image

from unimedvl.data.storage import iter_samples
from unimedvl.data.tasks import MODALITY_ANSWERS, MODALITY_QUESTIONS

QUESTIONS = {"training": "What imaging modality is this?", "unseen": "Which imaging technique produced this picture?"}
assert QUESTIONS["training"] in MODALITY_QUESTIONS and QUESTIONS["unseen"] not in MODALITY_QUESTIONS


def held_out_images(corpus: Path, split: str) -> dict[str, dict[str, dict]]:
    """modality -> source -> sha256 -> (image bytes, licence): the first input image of every held-out sample."""
    found: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for sample in iter_samples(corpus, split):
        image = next((item.image for item in sample.items if item.kind == "image" and item.role == "user"), None)
        if image is None or sample.modality == "other":
            continue
        found[sample.modality][sample.source].setdefault(image.sha256, (image, sample.licence))
    return found


def pick(by_source: dict[str, dict], count: int, rng: random.Random) -> list[tuple[str, object, str]]:
    """Up to `count` images, one source after another in turn, each source's images in a seeded order."""
    queues = {s: rng.sample(sorted(images.items()), len(images)) for s, images in sorted(by_source.items())}
    chosen: list[tuple[str, object, str]] = []
    while len(chosen) < count and any(queues.values()):
        for source, queue in queues.items():
            if queue and len(chosen) < count:
                _, (image, licence) = queue.pop()
                chosen.append((source, image, licence))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-modality", type=int, default=20)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.corpus / "data" / args.split).is_dir():
        raise SystemExit(f"{args.corpus} has no built '{args.split}' split (run `unimedvl data build` first)")
    rng, items, licences = random.Random(args.seed), [], set()
    for modality, by_source in sorted(held_out_images(args.corpus, args.split).items()):
        chosen = pick(by_source, args.per_modality, rng)
        for source, image, licence in chosen:
            stem = f"{source}-{image.sha256[:12]}"
            pixels = Image.open(io.BytesIO(image.data))
            pixels.load()
            licences.add(f"{source}: {licence}")
            for phrasing, question in QUESTIONS.items():
                items.append(closed(f"{stem}/{phrasing}", f"{stem}.png", pixels, question, MODALITY_ANSWERS[modality],
                                    {"modality": modality, "source": source, "phrasing": phrasing}))
        print(f"{modality}: {len(chosen)} images from {len({c[0] for c in chosen})} sources")
    _write(args.out, items,
           f"# modality (local): held-out images of {args.corpus.name}, split '{args.split}', at their stored size\n\n"
           "Built by scripts/build_local_modality_set.py. Research-use images: do not redistribute.\n", [])
    (args.out / "LICENSE.md").write_text("# Licences of the sources\n\n"
                                        + "\n".join(f"- {line}" for line in sorted(licences)) + "\n")
    print(f"{len(items)} items -> {args.out}")


if __name__ == "__main__":
    main()
