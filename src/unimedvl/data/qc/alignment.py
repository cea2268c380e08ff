"""Stage 2: medical image-text alignment scores and LLM text judging.

Scorers are pluggable (`AlignmentScorer`): each maps a sample to a score in [0, 1].

* :class:`ModalityConsistencyScorer` (built in, offline): does the text name the sample's modality
  (or contradict it), and does the image's colour match the modality (radiology and OCT are grey,
  fundus, histopathology and endoscopy are colour)? A transparent heuristic, not a learned model.
* :class:`OpenClipScorer`: cosine similarity from an open_clip-format model (BiomedCLIP, MedSigLIP)
  read from a local folder (`open_clip_config.json` + `*.safetensors`); needs the `open_clip` package.
* :class:`LLMJudge`: a medical LLM through any OpenAI-compatible endpoint grades each sample's text
  with a written rubric; answers are cached on disk (SQLite) so a rebuild asks nothing twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from unimedvl.data.schema import Sample
from unimedvl.errors import ConfigError

MODALITY_PATTERNS = {
    "chest_xray": r"x-?ray|radiograph|\bcxr\b|chest film",
    "ct": r"\bct\b|computed tomograph",
    "mri": r"\bmri?\b|magnetic resonance|\bt1\b|\bt2\b|flair",
    "ultrasound": r"ultrasound|sonograph|\bus\b",
    "histopathology": r"histopath|h&e|\bihc\b|stain|slide|biopsy|tissue",
    "fundus": r"fundus|retinal photo",
    "oct": r"\boct\b|optical coherence",
    "endoscopy": r"endoscop|colonoscop|gastroscop|polyp",
}
COLOUR_MODALITIES = {"fundus", "histopathology", "endoscopy"}
GREY_MODALITIES = {"chest_xray", "ct", "mri", "oct"}


class AlignmentScorer(Protocol):
    name: str

    def score(self, sample: Sample, metrics: dict) -> float: ...


@dataclass
class ModalityConsistencyScorer:
    """0.5 * text agreement + 0.5 * colour agreement (each 1 agree, 0.5 unknown, 0 contradict)."""

    name: str = "modality_consistency"
    colour_threshold: float = 6.0  # mean |R-G| + |G-B| above this counts as a colour image

    def text_agreement(self, sample: Sample) -> float:
        text = " ".join(sample.texts()).lower()
        named = {m for m, pattern in MODALITY_PATTERNS.items() if re.search(pattern, text)}
        if not named:
            return 0.5
        if sample.modality in named:
            return 1.0
        # The ultrasound pattern's "us" is weak evidence; ignore it when something else matches.
        return 0.5 if named == {"ultrasound"} and "ultrasound" not in text else 0.0

    def colour_agreement(self, sample: Sample, metrics: dict) -> float:
        colour = metrics.get("colour")
        if colour is None:
            return 0.5
        is_colour = colour > self.colour_threshold
        if sample.modality in COLOUR_MODALITIES:
            return 1.0 if is_colour else 0.0
        if sample.modality in GREY_MODALITIES:
            return 0.0 if is_colour else 1.0
        return 0.5

    def score(self, sample: Sample, metrics: dict) -> float:
        return 0.5 * self.text_agreement(sample) + 0.5 * self.colour_agreement(sample, metrics)


class OpenClipScorer:
    """Image-text cosine from a local open_clip-format model folder (safetensors weights only)."""

    name = "open_clip"

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        folder = Path(folder)
        config_path = folder / "open_clip_config.json"
        weights = sorted(folder.glob("*.safetensors"))
        if not config_path.is_file() or not weights:
            raise ConfigError(f"{folder}: expected open_clip_config.json and a .safetensors weights file")
        try:
            import open_clip  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("the open_clip scorer needs the open_clip_torch package") from None
        config = json.loads(config_path.read_text())
        model_name = f"local-{folder.name}"
        open_clip.factory._MODEL_CONFIGS[model_name] = config["model_cfg"]
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights[0]),
                                                                               device=device)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device

    def score(self, sample: Sample, metrics: dict) -> float:
        import io

        import torch
        from PIL import Image

        image = Image.open(io.BytesIO(sample.images()[0].data)).convert("RGB")
        text = " ".join(t for t in sample.texts())[:300]
        with torch.no_grad():
            img = self.model.encode_image(self.preprocess(image)[None].to(self.device))
            txt = self.model.encode_text(self.tokenizer([text]).to(self.device))
            cos = torch.nn.functional.cosine_similarity(img, txt).item()
        return max(0.0, min(1.0, cos))


JUDGE_RUBRIC = """You are a board-certified physician reviewing training data for a medical vision-language model.
You see the text of one sample (a question and answer, a caption, a report, or an image-generation prompt).
Grade it from 1 to 5:
5 = medically correct, specific, internally consistent, in clear English;
4 = correct with minor vagueness or style problems;
3 = partly correct, or too generic to be useful;
2 = contains a medical error or the answer does not fit the question;
1 = wrong, nonsensical, unsafe, or contains a patient identifier (name, ID, date of birth).
Reply with JSON only: {"score": <1-5>, "reason": "<one sentence>"}."""


def _parse_verdict(content: str) -> tuple[float, str]:
    match = re.search(r"\{.*\}", content, re.DOTALL)
    verdict = json.loads(match.group(0) if match else content)
    score = float(verdict["score"])
    if not 1 <= score <= 5:
        raise ValueError(f"score {score} outside 1-5")
    return score, str(verdict.get("reason", ""))


def _valid_verdict(content: str) -> bool:
    try:
        _parse_verdict(content)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        return False
    return True


class LLMJudge:
    """Grades sample text through an OpenAI-compatible `/chat/completions` endpoint, cached on disk."""

    name = "llm_judge"

    def __init__(self, endpoint: str, model: str, cache_path: str | Path, *, api_key: str | None = None,
                 rubric: str = JUDGE_RUBRIC, timeout: float = 60.0) -> None:
        from unimedvl.data.llm_client import CachedChatClient

        self.rubric = rubric
        self.client = CachedChatClient(endpoint, model, cache_path, api_key=api_key, timeout=timeout)

    def judge_text(self, text: str) -> tuple[float | None, str]:
        content = self.client.complete(self.rubric, text, accept=_valid_verdict)
        if content is None:
            return None, "judge_error"  # not cached: retried on the next build
        return _parse_verdict(content)

    def score(self, sample: Sample, metrics: dict) -> float:
        score, _ = self.judge_text("\n".join(sample.texts()))
        return float("nan") if score is None else (score - 1) / 4


def build_scorers(config: dict, work_dir: Path) -> list[AlignmentScorer]:
    """Scorers named in the build config's `qc.stage2.scorers` list (default: the built-in one)."""
    out: list[AlignmentScorer] = []
    for spec in config.get("scorers", [{"type": "modality_consistency"}]):
        kind = spec.get("type")
        if kind == "modality_consistency":
            out.append(ModalityConsistencyScorer())
        elif kind == "open_clip":
            out.append(OpenClipScorer(spec["path"]))
        elif kind == "llm_judge":
            import os

            out.append(LLMJudge(spec["endpoint"], spec["model"], work_dir / "llm_judge_cache.sqlite",
                                api_key=os.environ.get(spec.get("api_key_env", "OPENAI_API_KEY"))))
        else:
            raise ConfigError(f"unknown stage-2 scorer {kind!r}; choose modality_consistency, open_clip or llm_judge")
    return out
