"""Evaluate a UniMedVL-tiny checkpoint on the held-out splits of its corpus (`unimedvl.eval.corpus_eval`).

    .venv/bin/python scripts/evaluate_unimedvl_tiny.py --model DIR --corpus DIR --out DIR [--quick]

Writes OUT/eval.json and OUT/eval.md: VQA accuracy per question type against the majority
baselines, the independent classifier's accuracy on real test images, the rate at which generated
images are recognised as the requested modality (and pneumonia finding), and held-out losses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    from unimedvl.eval.corpus_eval import evaluate_on_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    report = evaluate_on_corpus(args.model, args.corpus, args.out, quick=args.quick)
    print(json.dumps({k: v for k, v in report.items() if k != "vqa_examples"}, indent=2))


if __name__ == "__main__":
    main()
