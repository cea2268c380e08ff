"""Files shipped with the package: the built-in model and sample images."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
REFERENCE_TINY = ASSETS / "reference-tiny"
SAMPLES = ASSETS / "samples"
SAMPLE_CORPUS_CONFIG = ASSETS / "sample_data" / "build.yaml"
EVAL_SETS = ASSETS / "eval_sets"  # held-out evaluation sets (scripts/build_eval_sets.py)
WEB = ASSETS / "web"  # the page `unimedvl serve` serves (index.html, app.js)
JUDGE = ASSETS / "judge"  # the independent judge CNN / proxy feature extractor (eval/features.py)


UNIMEDVL_TINY = ASSETS / "unimedvl-tiny"


def default_checkpoint() -> Path:
    """The model the CLI uses when no --checkpoint is given: UniMedVL-tiny when packaged, else the fixture."""
    return UNIMEDVL_TINY if (UNIMEDVL_TINY / "ema.safetensors").is_file() else REFERENCE_TINY
