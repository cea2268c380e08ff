"""The benchmarks `unimedvl eval` knows: official release formats and our bundled held-out sets."""

from __future__ import annotations

from unimedvl.assets import EVAL_SETS
from unimedvl.errors import InputError
from unimedvl.eval.benchmarks import bundled, gmai_mmbench, medxpertqa, omnimedvqa, pathvqa, reports, slake, vqa_rad
from unimedvl.eval.benchmarks.base import Benchmark, BenchmarkDataError, EvalItem

PUBLISHED = "the UniMedVL paper's medical VQA table (arXiv 2510.15710; github.com/uni-medical/UniMedVL README)"


def _published(unimedvl: float, gmai_vl: float, huatuo: float, bagel: float, healthgpt: float) -> dict[str, float]:
    return {"UniMedVL (14B)": unimedvl, "GMAI-VL (7B)": gmai_vl, "HuatuoGPT-Vision (7B)": huatuo, "BAGEL (7B)": bagel,
            "HealthGPT-L14 (14B)": healthgpt}


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("vqa-rad", "VQA-RAD (test split)", vqa_rad.load, f"'{vqa_rad.ANNOTATIONS}' + '{vqa_rad.IMAGES}/'",
              _published(61.9, 66.3, 53.0, 60.09, 58.3), PUBLISHED),
    Benchmark("slake", "SLAKE (English test split)", slake.load, "'test.json' + 'imgs/xmlab<N>/source.jpg'",
              _published(75.4, 72.9, 49.1, 58.91, 64.5), PUBLISHED),
    Benchmark("pathvqa", "PathVQA (test split)", pathvqa.load, "the Hugging Face release's 'data/test-*.parquet'",
              _published(53.5, 39.8, 32.0, 39.05, 44.4), PUBLISHED),
    Benchmark("omnimedvqa", "OmniMedVQA (open access)", omnimedvqa.load,
              "'QA_information/Open-access/*.json' + 'Images/'", _published(85.8, 88.5, 50.0, 71.13, 74.4), PUBLISHED),
    Benchmark("gmai-mmbench", "GMAI-MMBench", gmai_mmbench.load, "VLMEvalKit's 'GMAI-MMBench_VAL.tsv'",
              _published(60.75, 61.74, 50.22, 48.11, 43.1), PUBLISHED),
    Benchmark("medxpertqa-mm", "MedXpertQA (multimodal test)", medxpertqa.load, "'MM/test.jsonl' + 'images/'"),
    Benchmark("reports", "Report generation (IU X-ray-style table)", reports.load,
              "'reports.csv' (image, findings, impression) + the images"),
    Benchmark("cxr-pneumonia", "Chest X-ray pneumonia, 224 px, held out (bundled)", bundled.load,
              "'items.jsonl' + images", bundled=EVAL_SETS / "cxr-pneumonia"),
    Benchmark("breast-ultrasound", "Breast ultrasound, benign or malignant, held out (bundled)", bundled.load,
              "'items.jsonl' + images", bundled=EVAL_SETS / "breast-ultrasound"),
    Benchmark("modality", "Imaging modality, held out (bundled)", bundled.load, "'items.jsonl' + images",
              bundled=EVAL_SETS / "modality"),
)}
BUNDLED = tuple(name for name, b in BENCHMARKS.items() if b.bundled is not None)
__all__ = ["BENCHMARKS", "BUNDLED", "Benchmark", "BenchmarkDataError", "EvalItem", "get", "bundled"]


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} or 'all'")
    return BENCHMARKS[name]
