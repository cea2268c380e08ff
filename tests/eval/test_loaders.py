"""Every benchmark loader on a small file written here in the release's own format, and its errors."""

from __future__ import annotations

import base64
import csv
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unimedvl.assets import SAMPLES
from unimedvl.eval.benchmarks import BENCHMARKS, BUNDLED, BenchmarkDataError, get

CXR, MRI = SAMPLES / "chest_xray_nih.png", SAMPLES / "brain_mri_msd.png"


def test_vqa_rad_osf_release(tmp_path: Path) -> None:
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    shutil.copy(CXR, tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    rows = [
        {"qid": 1, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": "Yes", "answer_type": "CLOSED",
         "question": "Is there cardiomegaly?", "phrase_type": "test_freeform"},
        {"qid": 2, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": "left lung", "answer_type": "OPEN",
         "question": "Where is the mass?", "phrase_type": "test_para"},
        {"qid": 3, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": 2, "answer_type": "OPEN",
         "question": "How many?", "phrase_type": "freeform"},  # a training item: not in the test split
    ]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    items = get("vqa-rad").load(tmp_path)
    assert [(i.id, i.kind, i.answer) for i in items] == [("1", "closed", "Yes"), ("2", "open", "left lung")]
    assert items[0].groups == {"answer_type": "closed", "organ": "chest"} and items[0].image_bytes() == CXR.read_bytes()
    rows[0].pop("phrase_type")
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    with pytest.raises(BenchmarkDataError, match=r"VQA_RAD Dataset Public.json: item 1: missing field 'phrase_type'"):
        get("vqa-rad").load(tmp_path)


def test_slake_english_only(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "xmlab102").mkdir(parents=True)
    shutil.copy(MRI, tmp_path / "imgs" / "xmlab102" / "source.jpg")
    base = {"img_name": "xmlab102/source.jpg", "modality": "MRI", "content_type": "Organ", "answer_type": "CLOSED"}
    (tmp_path / "test.json").write_text(json.dumps([
        {**base, "qid": 7, "question": "Is this a brain MRI?", "answer": "Yes", "q_lang": "en"},
        {**base, "qid": 8, "question": "这是大脑吗？", "answer": "是", "q_lang": "zh"},
    ]))
    items = get("slake").load(tmp_path)
    assert [i.id for i in items] == ["7"] and items[0].groups["modality"] == "mri"
    (tmp_path / "test.json").write_text("[{")
    with pytest.raises(BenchmarkDataError, match="test.json: not valid JSON"):
        get("slake").load(tmp_path)


def test_pathvqa_parquet_release(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    table = pa.table({"image": [{"bytes": CXR.read_bytes(), "path": None}, {"bytes": MRI.read_bytes(), "path": None}],
                      "question": ["Is this tissue malignant?", "What organ is this?"], "answer": ["no", "brain"]})
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")  # not read
    items = get("pathvqa").load(tmp_path)
    assert [(i.kind, i.answer) for i in items] == [("closed", "no"), ("open", "brain")]
    (tmp_path / "data" / "test-00000-of-00001.parquet").write_bytes(b"PAR1 partial")
    with pytest.raises(BenchmarkDataError, match="test-00000-of-00001.parquet: not a readable parquet file"):
        get("pathvqa").load(tmp_path)


def test_omnimedvqa_reads_every_file(tmp_path: Path) -> None:
    qa = tmp_path / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (tmp_path / "Images" / "A").mkdir(parents=True)
    shutil.copy(CXR, tmp_path / "Images" / "A" / "1.png")
    for name, n in (("SetA.json", 2), ("SetB.json", 1)):
        (qa / name).write_text(json.dumps([
            {"question_id": f"{name}-{i}", "question": "Which modality?", "gt_answer": "X-ray", "option_A": "CT",
             "option_B": "X-ray", "option_C": "MRI", "image_path": "Images/A/1.png", "question_type": "Modality",
             "modality_type": "X-Ray"} for i in range(n)]))
    items = get("omnimedvqa").load(tmp_path)
    assert len(items) == 3 and {i.groups["dataset"] for i in items} == {"SetA", "SetB"}
    assert items[0].answer == "B" and items[0].options == (("A", "CT"), ("B", "X-ray"), ("C", "MRI"))
    (qa / "SetB.json").write_text(json.dumps([{"question": "q", "gt_answer": "Z", "option_A": "x", "option_B": "y",
                                                "image_path": "Images/A/1.png"}]))
    with pytest.raises(BenchmarkDataError, match="SetB.json: item 1: field 'gt_answer' 'Z' is none of the options"):
        get("omnimedvqa").load(tmp_path)


def test_gmai_mmbench_vlmevalkit_tsv(tmp_path: Path) -> None:
    image = base64.b64encode(CXR.read_bytes()).decode()
    header = ["index", "image", "question", "A", "B", "C", "D", "E", "answer", "category", "l2-category", "split",
              "clinical vqa task", "department", "perceptual granularity"]
    rows = [["0", image, "What is shown?", "lung", "heart", "", "", "", "A", "X-ray", "chest", "VAL", "Disease Diagnosis",
             "Pulmonary", "Image Level"],
            ["1", "0", "Which side?", "left", "right", "both", "", "", "C", "X-ray", "chest", "VAL", "Organ Recognition",
             "Pulmonary", "Image Level"]]  # row 1 reuses row 0's image by index, as VLMEvalKit writes it
    path = tmp_path / "GMAI-MMBench_VAL.tsv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    items = get("gmai-mmbench").load(tmp_path)
    assert [i.answer for i in items] == ["A", "C"] and items[1].image_bytes() == CXR.read_bytes()
    assert items[1].options == (("A", "left"), ("B", "right"), ("C", "both"))
    assert items[0].groups["clinical_vqa_task"] == "Disease Diagnosis"
    rows[0][8] = "E"
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows([header, *rows])
    with pytest.raises(BenchmarkDataError, match="GMAI-MMBench_VAL.tsv: row 1: field 'answer' 'E' names no option"):
        get("gmai-mmbench").load(tmp_path)


def test_medxpertqa_mm(tmp_path: Path) -> None:
    (tmp_path / "MM").mkdir()
    (tmp_path / "images").mkdir()
    shutil.copy(MRI, tmp_path / "images" / "MM-1-a.jpeg")
    line = {"id": "MM-1", "question": "What is the lesion?\nAnswer Choices: (A) glioma (B) abscess", "label": "A",
            "options": {"A": "glioma", "B": "abscess"}, "images": ["MM-1-a.jpeg"], "medical_task": "Diagnosis",
            "body_system": "Nervous", "question_type": "Reasoning"}
    (tmp_path / "MM" / "test.jsonl").write_text(json.dumps(line) + "\n")
    (item,) = get("medxpertqa-mm").load(tmp_path)
    assert item.question == "What is the lesion?" and item.answer == "A" and item.groups["body_system"] == "Nervous"
    (tmp_path / "MM" / "test.jsonl").write_text(json.dumps({**line, "images": []}) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"MM/test.jsonl: line 1: .*'images' a non-empty list"):
        get("medxpertqa-mm").load(tmp_path)


def test_report_table(tmp_path: Path) -> None:
    shutil.copy(CXR, tmp_path / "cxr1.png")
    with (tmp_path / "reports.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "findings", "impression"])
        writer.writeheader()
        writer.writerow({"image": "cxr1.png", "findings": "Heart size normal.", "impression": "No acute disease."})
    (item,) = get("reports").load(tmp_path)
    assert item.kind == "report" and item.answer == "Findings: Heart size normal. Impression: No acute disease."
    (tmp_path / "cxr1.png").unlink()
    with pytest.raises(BenchmarkDataError, match="reports.csv: row 1: image 'cxr1.png' not found"):
        get("reports").load(tmp_path)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_sets_load_and_carry_their_licence(name: str) -> None:
    benchmark = BENCHMARKS[name]
    items = benchmark.load(benchmark.bundled)
    assert len(items) >= 40 and len({i.id for i in items}) == len(items)
    assert (benchmark.bundled / "LICENSE.md").read_text().strip() and (benchmark.bundled / "README.md").is_file()
    yes_no = [i for i in items if i.groups.get("question_type") == "yes/no"]
    assert all(i.flipped and len(i.paraphrases) == 2 for i in yes_no)
    if yes_no:  # balanced where the data allows: as many yes as no answers in the chest X-ray set
        answers = [i.answer for i in yes_no]
        assert name != "cxr-pneumonia" or answers.count("yes") == answers.count("no")
