"""Report-generation metrics as the literature computes them: pycocoevalcap's BLEU-1..4, METEOR,
ROUGE-L and CIDEr (the scorers R2Gen and its successors report), on a written tokenisation.

Tokenisation (both sides): lower case, every character that is not a letter or digit becomes a
space, split on white space. BLEU is corpus-level with the closest reference length; ROUGE-L is
the LCS F-measure with beta 1.2 averaged over reports; CIDEr-D uses the corpus' own document
frequencies (so it is only comparable across models on the same report set). METEOR runs
METEOR 1.5 through Java; without a `java` on the PATH it is reported as None.
"""

from __future__ import annotations

import re
import shutil


def _scorer(name: str):  # noqa: ANN202
    """The pycocoevalcap scorer class `name` (Bleu, Cider, Meteor, Rouge), with a clear error when it is absent."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        from unimedvl.errors import ConfigError

        raise ConfigError("report metrics need pycocoevalcap: pip install 'unimedvl[eval]'") from None
    return {"Bleu": Bleu, "Cider": Cider, "Meteor": Meteor, "Rouge": Rouge}[name]


def tokenize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _corpus(predictions: list[str], references: list[str]) -> tuple[dict, dict]:
    if len(predictions) != len(references) or not predictions:
        raise ValueError("report metrics need as many predictions as references, and at least one")
    res = {i: [tokenize(p) or "empty"] for i, p in enumerate(predictions)}  # the scorers need a word
    gts = {i: [tokenize(r)] for i, r in enumerate(references)}
    return gts, res


def bleu(predictions: list[str], references: list[str]) -> list[float]:
    score, _ = _scorer("Bleu")(4).compute_score(*_corpus(predictions, references), verbose=0)
    return [float(s) for s in score]


def rouge_l(predictions: list[str], references: list[str]) -> float:
    return float(_scorer("Rouge")().compute_score(*_corpus(predictions, references))[0])


def cider(predictions: list[str], references: list[str]) -> float:
    return float(_scorer("Cider")().compute_score(*_corpus(predictions, references))[0])


def meteor(predictions: list[str], references: list[str]) -> float | None:
    if shutil.which("java") is None:
        return None
    scorer = _scorer("Meteor")()
    try:
        return float(scorer.compute_score(*_corpus(predictions, references))[0])
    finally:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def report_metrics(predictions: list[str], references: list[str]) -> dict[str, float | None]:
    b = bleu(predictions, references)
    return {"bleu_1": b[0], "bleu_2": b[1], "bleu_3": b[2], "bleu_4": b[3], "meteor": meteor(predictions, references),
            "rouge_l": rouge_l(predictions, references), "cider": cider(predictions, references)}
