"""Are generated images recognised as the requested modality (and finding)?

Prompts are plain requests per modality ("A chest X-ray with pneumonia.", "A fundus photograph.",
...); each is generated with several seeds, and the independent classifier's predictions on the
results are compared with the request.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from unimedvl.data.schema import MODALITIES
from unimedvl.eval.classifier import SmallCNN, predict
from unimedvl.model.sampling import GuidanceOptions

PROMPTS = {
    "chest_xray": ["A chest X-ray with pneumonia.", "A chest X-ray with no pneumonia."],
    "ultrasound": ["A breast ultrasound image."],
    "mri": ["A brain MRI scan."],
    "ct": ["An axial CT slice of the abdomen."],
    "fundus": ["A fundus photograph."],
    "oct": ["A retinal OCT scan."],
    "histopathology": ["A histopathology image of breast tissue."],
    "endoscopy": ["An endoscopy image with a polyp."],
}


@dataclass
class GenerationResult:
    per_modality: dict[str, float] = field(default_factory=dict)
    pneumonia: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, dict[str, int]] = field(default_factory=dict)  # requested -> what the judge saw, counted
    images: list = field(default_factory=list)  # (prompt, seed, PIL image) for the report

    @property
    def overall(self) -> float:
        return sum(self.per_modality.values()) / max(1, len(self.per_modality))


def evaluate_generation(engine, modality_model: SmallCNN, pneumonia_model: SmallCNN, *, seeds: int = 6,  # noqa: ANN001
                        size: int = 64, steps: int = 20, text_scale: float = 4.0) -> GenerationResult:
    result = GenerationResult()
    guidance = GuidanceOptions(num_timesteps=steps, timestep_shift=1.0, text_scale=text_scale, interval=(0.0, 1.0))
    for modality, prompts in PROMPTS.items():
        generated = []
        for prompt in prompts:
            for seed in range(seeds):
                image = engine.generate(prompt, height=size, width=size, guidance=guidance, seed=seed)
                generated.append((prompt, image))
                if seed < 2:
                    result.images.append((prompt, seed, image))
        predictions = predict(modality_model, [g[1] for g in generated])
        result.per_modality[modality] = sum(p == MODALITIES.index(modality) for p in predictions) / len(predictions)
        result.predicted[modality] = dict(Counter(MODALITIES[p] for p in predictions).most_common())
        if modality == "chest_xray":
            findings = predict(pneumonia_model, [g[1] for g in generated])
            wanted = [1 if "no pneumonia" not in g[0] else 0 for g in generated]
            for label, name in ((1, "with pneumonia"), (0, "no pneumonia")):
                rows = [f == w for f, w in zip(findings, wanted) if w == label]
                result.pneumonia[name] = sum(rows) / max(1, len(rows))
    return result
