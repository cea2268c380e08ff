"""Source adapters on their official layouts, and bad input that never stops a build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import SAMPLE_DATA, copy_images, plan_kinds, write_config
from PIL import Image

from unimedvl.data.manifest import Manifest
from unimedvl.data.pipeline import BuildConfig, build_corpus
from unimedvl.data.storage import iter_samples
from unimedvl.errors import ConfigError

CT = ["ct_abdomen_msd_0.png", "ct_abdomen_msd_1.png"]
CXR = ["cxr_nih_0.png", "cxr_nih_1.png"]


def _build(tmp_path: Path, sources: list[dict], **extra) -> tuple[Path, Manifest]:  # noqa: ANN003
    config = write_config(tmp_path, sources, **extra)
    out = tmp_path / "out"
    return out, build_corpus(BuildConfig.from_yaml(config), out, log=lambda m: None)


def test_vqa_formats_and_a_malformed_file(tmp_path: Path) -> None:
    copy_images(tmp_path / "rad" / "images", CT + CXR)
    (tmp_path / "rad" / "VQA_RAD Dataset Public.json").write_text(json.dumps([
        {"qid": 1, "image_name": CT[0], "question": "Is this a CT scan?", "answer": "yes", "answer_type": "CLOSED"},
        {"qid": 2, "image_name": CXR[0], "question": "Is the heart enlarged on this x-ray?", "answer": "no",
         "answer_type": "CLOSED"},
        {"qid": 3, "image_name": CXR[1], "answer": "no question here"},
    ]))
    copy_images(tmp_path / "slake" / "imgs" / "xmlab1", [CT[1]])
    (tmp_path / "slake" / "train.json").write_text(json.dumps([
        {"img_name": f"xmlab1/{CT[1]}", "question": "Which organ is shown?", "answer": "Liver", "q_lang": "en",
         "modality": "CT", "answer_type": "OPEN"},
        {"img_name": f"xmlab1/{CT[1]}", "question": "这是什么?", "answer": "肝脏", "q_lang": "zh", "modality": "CT"},
    ]))
    (tmp_path / "path").mkdir()
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": (SAMPLE_DATA / "oct-kermany/CNV-1016042-1.jpeg").read_bytes()},
                                          "question": "Is there a lesion?", "answer": "yes"}]),
                   tmp_path / "path" / "train.parquet")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "VQA_RAD Dataset Public.json").write_text("[{not json")
    out, manifest = _build(tmp_path, [
        {"name": "vqa-rad", "adapter": "vqa", "path": "rad", "licence": "CC0", "tasks": ["vqa"], "options": {"format": "vqa_rad"}},
        {"name": "slake", "adapter": "vqa", "path": "slake", "licence": "CC-BY-4.0", "tasks": ["vqa"], "options": {"format": "slake"}},
        {"name": "pathvqa", "adapter": "vqa", "path": "path", "licence": "MIT", "modality": "histopathology",
         "tasks": ["vqa"], "options": {"format": "pathvqa"}},
        {"name": "broken", "adapter": "vqa", "path": "broken", "licence": "x", "tasks": ["vqa"], "options": {"format": "vqa_rad"}},
    ], splits={"train": 1.0}, qc={"stage2": {"thresholds": {"default": 0.5, "histopathology": 0.0}}})
    real = {s.texts()[0]: s for s in iter_samples(out) if not s.template_made}
    assert set(real) == {"Is this a CT scan?", "Is the heart enlarged on this x-ray?", "Which organ is shown?",
                         "Is there a lesion?"}
    assert real["Is this a CT scan?"].modality == "ct" and real["Is the heart enlarged on this x-ray?"].modality == "chest_xray"
    assert real["Which organ is shown?"].modality == "ct" and real["Is there a lesion?"].modality == "histopathology"
    stage1 = json.loads((out / "qc/stage1.json").read_text())
    assert stage1["input_errors"]["by_source"] == {"broken": 1, "vqa-rad": 1}  # malformed file + entry without question
    assert "malformed" in (out / "qc/stage1.md").read_text()


def test_unreadable_images_are_counted_and_the_build_goes_on(tmp_path: Path) -> None:
    copy_images(tmp_path / "folders" / "normal", CXR)
    copy_images(tmp_path / "folders" / "abnormal", CT)
    (tmp_path / "folders" / "abnormal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("L", (64, 64), 128).save(tmp_path / "folders" / "normal" / "blank.png")
    out, manifest = _build(tmp_path, [{"name": "cls", "adapter": "class_folder", "path": "folders", "licence": "x",
                                       "modality": "ct", "tasks": ["vqa", "caption"]}], splits={"train": 1.0})
    assert manifest.origin["sources"]["cls"]["errors"] == 1
    assert manifest.origin["qc"]["stage1_rejected"].get("image_blank", 0) >= 2  # the blank image's samples
    assert manifest.total > 0 and "broken.png" in (out / "qc/stage1.md").read_text()


def test_paired_and_segmentation_folders(tmp_path: Path) -> None:
    a, b, images, masks = (tmp_path / "pairs" / "HE", tmp_path / "pairs" / "IHC", tmp_path / "seg" / "images",
                           tmp_path / "seg" / "masks")
    copy_images(a, CT)
    copy_images(images, CT)
    b.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name in CT:  # B is a real transformation of A (an inverted image); the mask a real threshold of it
        grey = np.asarray(Image.open(a / name).convert("I")).astype(np.float64)
        norm = ((grey - grey.min()) / (np.ptp(grey) or 1) * 255).astype(np.uint8)
        Image.fromarray(255 - norm).save(b / name)
        Image.fromarray(((norm > 128) * 255).astype(np.uint8)).save(masks / name)
    out, manifest = _build(tmp_path, [
        {"name": "stain", "adapter": "paired", "path": "pairs", "modality": "ct", "licence": "x",
         "tasks": ["virtual_staining"], "options": {"a_dir": "HE", "b_dir": "IHC", "task": "virtual_staining",
                                                    "a_name": "H&E", "b_name": "HER2 IHC"}},
        {"name": "seg", "adapter": "segmentation", "path": "seg", "modality": "ct", "licence": "x",
         "tasks": ["segmentation"], "options": {"structure": "bright region"}},
    ], splits={"train": 1.0}, qc={"stage2": {"thresholds": {"default": 0.0}}})
    by_task = {s.task: s for s in iter_samples(out)}
    stain, seg = by_task["virtual_staining"], by_task["segmentation"]
    assert plan_kinds(stain) == [("latent", False), ("vit",), ("text", False), ("latent", True)]
    assert "HER2 IHC" in stain.texts()[0]
    assert "bright region" in seg.texts()[0] and seg.images()[1].format == "png"


def test_a_source_naming_a_missing_folder_is_reported_and_the_others_build(tmp_path: Path) -> None:
    copy_images(tmp_path / "folders" / "normal", CXR)
    out, manifest = _build(tmp_path, [
        {"name": "missing", "adapter": "class_folder", "path": "nowhere", "licence": "x", "modality": "ct"},
        {"name": "ok", "adapter": "class_folder", "path": "folders", "licence": "x", "modality": "chest_xray",
         "tasks": ["vqa"]},
    ], splits={"train": 1.0})
    assert manifest.total > 0
    stage1 = json.loads((out / "qc/stage1.json").read_text())
    assert stage1["input_errors"]["by_source"] == {"missing": 1}
    assert "source folder or file not found" in (out / "qc/stage1.md").read_text()


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown adapter"):
        BuildConfig.from_yaml(write_config(tmp_path, [{"name": "x", "adapter": "zip", "path": ".", "licence": "x"}]))
    with pytest.raises(ConfigError, match="unknown modality"):
        BuildConfig.from_yaml(write_config(tmp_path, [{"name": "x", "adapter": "class_folder", "path": ".",
                                                       "licence": "x", "modality": "xray"}]))
    with pytest.raises(ConfigError, match="build config not found"):
        BuildConfig.from_yaml(tmp_path / "missing.yaml")


def test_super_resolution_degradation_is_documented_and_deterministic(tmp_path: Path) -> None:
    out, _ = _build(tmp_path, [{"name": "msd", "adapter": "image_table", "path": str(SAMPLE_DATA / "msd-nih-slices"),
                                "licence": "CC-BY-SA-4.0", "tasks": ["super_resolution"], "limit": 3,
                                "options": {"table": "labels.csv"}}], splits={"train": 1.0})
    samples = sorted(iter_samples(out), key=lambda s: s.id)
    for s in samples:
        low, high = s.images()
        factor = int(s.provenance["variant"][1:])
        assert (low.width, low.height) == (high.width // factor, high.height // factor)
        assert f"{factor}" in s.texts()[0]


def test_alignment_scorer_rejects_a_grey_image_labelled_histopathology(tmp_path: Path) -> None:
    (tmp_path / "path").mkdir()
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": (SAMPLE_DATA / "oct-kermany/CNV-1016042-1.jpeg").read_bytes()},
                                          "question": "Is there a lesion?", "answer": "yes"}]),
                   tmp_path / "path" / "train.parquet")
    out, manifest = _build(tmp_path, [{"name": "pathvqa", "adapter": "vqa", "path": "path", "licence": "MIT",
                                       "modality": "histopathology", "tasks": ["vqa"], "options": {"format": "pathvqa"}}],
                           splits={"train": 1.0})
    # The real QA pair names no modality and its image is grey: 0.5 * 0.5 + 0.5 * 0 = 0.25 < 0.5.
    assert manifest.origin["qc"]["stage2_rejected"] == {"alignment_below_threshold:modality_consistency": 1}
    # The two modality questions (open and a choice) answer "Histopathology": 0.5, kept.
    assert [s.template_made for s in iter_samples(out)] == [True, True]


@pytest.mark.parametrize("task", ["counterfactual", "cross_modal"])
def test_other_paired_tasks(tmp_path: Path, task: str) -> None:
    copy_images(tmp_path / "pairs" / "A", CT)
    copy_images(tmp_path / "pairs" / "B", CT[::-1])  # real images, B named like A
    for a, b in zip(CT, CT[::-1]):
        (tmp_path / "pairs" / "B" / b).rename(tmp_path / "pairs" / "B" / f"tmp_{a}")
    for a in CT:
        (tmp_path / "pairs" / "B" / f"tmp_{a}").rename(tmp_path / "pairs" / "B" / a)
    out, _ = _build(tmp_path, [{"name": "pairs", "adapter": "paired", "path": "pairs", "modality": "ct", "licence": "x",
                                "tasks": [task], "options": {"task": task, "finding": "a liver lesion",
                                                             "a_name": "T2", "b_name": "FLAIR", "target_modality": "mri"}}],
                    splits={"train": 1.0}, qc={"stage2": {"thresholds": {"default": 0.0}}})
    samples = [s for s in iter_samples(out) if s.task == task]
    assert len(samples) == 2
    plan = plan_kinds(samples[0])
    if task == "counterfactual":
        assert "a liver lesion" in samples[0].texts()[0] and plan[-1] == ("text", True)
    else:
        assert "FLAIR" in samples[0].texts()[0] and plan[-1] == ("latent", True)


def test_image_report_tables_in_the_iu_xray_layout(tmp_path: Path) -> None:
    root = tmp_path / "iu"
    copy_images(root / "images", CXR)
    (root / "indiana_reports.csv").write_text(
        "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        "1,normal,normal,Xray Chest PA and Lateral,cough,None.,The lungs are clear. No effusion.,No acute disease.\n"
        "2,Cardiomegaly,Cardiomegaly,Xray Chest PA,dyspnea,None.,The heart is enlarged.,Cardiomegaly.\n"
        "3,normal,normal,Xray Chest PA,none,None.,,\n")
    (root / "indiana_projections.csv").write_text(
        f"uid,filename,projection\n1,{CXR[0]},Frontal\n1,lateral.png,Lateral\n2,{CXR[1]},Frontal\n3,missing.png,Frontal\n")
    out, manifest = _build(tmp_path, [{"name": "iu", "adapter": "image_report", "path": "iu", "licence": "CC-BY-NC-ND-4.0",
                                       "tasks": ["report", "text_to_image"]}], splits={"train": 1.0})
    reports = {s.items[-1].text for s in iter_samples(out) if s.task == "report"}
    assert reports == {"Findings: The lungs are clear. No effusion. Impression: No acute disease.",
                       "Findings: The heart is enlarged. Impression: Cardiomegaly."}
    t2i = [s for s in iter_samples(out) if s.task == "text_to_image"]
    assert any("Cardiomegaly." in s.texts()[0] for s in t2i) and not any(s.template_made for s in t2i)
    assert manifest.origin["sources"]["iu"]["errors"] == 1  # the empty report (lateral views are not used)


def test_a_source_wide_label_gives_paired_and_mask_sets_captions_and_prompts(tmp_path: Path) -> None:
    """`options.label` labels every record of a source that has no per-record label (Kvasir, BCI)."""
    pairs, seg, plain = tmp_path / "pairs", tmp_path / "seg", tmp_path / "plain"
    for folder in (pairs / "HE", pairs / "IHC", seg / "images", seg / "masks"):
        copy_images(folder, CT)
    for folder in (plain / "images", plain / "masks"):
        copy_images(folder, CXR)
    out, _ = _build(tmp_path, [
        {"name": "stain", "adapter": "paired", "path": "pairs", "modality": "histopathology", "licence": "x",
         "tasks": ["caption", "text_to_image", "virtual_staining"],
         "options": {"a_dir": "HE", "b_dir": "IHC", "label": "H&E-stained breast tissue"}},
        {"name": "seg", "adapter": "segmentation", "path": "seg", "modality": "endoscopy", "licence": "x",
         "tasks": ["caption", "text_to_image", "segmentation"], "options": {"structure": "polyp", "label": "a polyp"}},
        {"name": "plain", "adapter": "segmentation", "path": "plain", "modality": "endoscopy", "licence": "x",
         "tasks": ["caption", "text_to_image", "segmentation"]},
    ], splits={"train": 1.0}, qc={"stage2": {"thresholds": {"default": 0.0}}})
    tasks: dict[str, set[str]] = {}
    for sample in iter_samples(out):
        tasks.setdefault(sample.source, set()).add(sample.task)
        if sample.task == "text_to_image":
            assert ("H&E-stained breast tissue" if sample.source == "stain" else "a polyp") in sample.texts()[0]
    assert tasks["stain"] == {"caption", "text_to_image", "virtual_staining"}
    assert tasks["seg"] == {"caption", "text_to_image", "segmentation"}
    assert tasks["plain"] == {"segmentation"}  # without a label there is nothing to caption


@pytest.mark.parametrize("content, message", [
    (b"name: x\nchunk_size: 0\nsources: [a.yaml]\n", "chunk_size must be an integer >= 1"),
    (b"name: x\nsources: 5\n", "sources must be a list"),
    (b"name: x\nsources: [5]\n", "each source is a file name or a mapping"),
    (b"name: x\nshard_rows: many\nsources: [a.yaml]\n", "shard_rows must be an integer"),
    (b"name: x\nsplits: [0.5]\nsources: [a.yaml]\n", "splits must map"),
    (b"name: \xff\xfe\nsources: [a.yaml]\n", "is not valid YAML"),
])
def test_bad_build_configs_get_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    """Issue 13, item 10: these ended in tracebacks."""
    path = tmp_path / "build.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        BuildConfig.from_yaml(path)
