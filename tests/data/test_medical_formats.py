"""DICOM and NIfTI inputs: windowing, slice selection, de-identification, bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pyarrow.parquet as pq
import pydicom
from data_helpers import write_config
from pydicom.data import get_testdata_file

from unimedvl.data.pipeline import BuildConfig, build_corpus
from unimedvl.data.storage import iter_samples

IDENTIFIERS = ("Doe^Jane", "Doe_Jane", "DOE", "PID-98765", "19610203", "Springfield General")


def _all_output_text(out: Path) -> bytes:
    """Every byte the build wrote, with Parquet shards decoded (their pages are compressed)."""
    blobs = []
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            blobs.append(repr(pq.read_table(path).to_pylist()).encode())
        else:
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


def _make_dicoms(folder: Path) -> None:
    patient = folder / "Doe_Jane" / "PID-98765"
    patient.mkdir(parents=True)
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm")):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-98765", "19610203"
        ds.InstitutionName = "Springfield General"
        ds.save_as(patient / f"Doe_Jane_{i}.dcm")
    good = (patient / "Doe_Jane_0.dcm").read_bytes()
    (patient / "truncated.dcm").write_bytes(good[: len(good) // 2])


def test_dicom_is_deidentified_and_bad_files_are_counted(tmp_path: Path, capsys) -> None:
    _make_dicoms(tmp_path / "dicom")
    config = write_config(tmp_path, [{"name": "dicom-set", "adapter": "dicom", "path": "dicom", "licence": "test",
                                      "tasks": ["vqa", "text_to_image"], "options": {"window": "soft_tissue"}}],
                          splits={"train": 1.0})
    out = tmp_path / "out"
    manifest = build_corpus(BuildConfig.from_yaml(config), out, log=print)
    samples = list(iter_samples(out))
    assert {s.modality for s in samples} == {"ct", "mri"}
    assert manifest.origin["qc"]["input_errors"] == 1  # the truncated file, reported and skipped
    assert "truncated.dcm" not in (out / "qc/stage1.md").read_text()  # error lines name pseudonyms, not paths
    assert "unreadable or truncated DICOM" in (out / "qc/stage1.md").read_text()
    written = _all_output_text(out) + capsys.readouterr().err.encode() + capsys.readouterr().out.encode()
    for identifier in IDENTIFIERS:
        assert identifier.encode() not in written, identifier
    ct = next(s for s in samples if s.modality == "ct")
    assert ct.provenance["Modality"] == "CT" and "PatientID" not in ct.provenance
    assert len(ct.group) == 16


def test_nifti_slices(tmp_path: Path) -> None:
    anatomical = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    config = write_config(tmp_path, [{"name": "t1", "adapter": "nifti", "path": str(anatomical), "modality": "mri",
                                      "licence": "nibabel test data (MIT)", "tasks": ["vqa"],
                                      "options": {"slices": 3}}], splits={"train": 1.0})
    out = tmp_path / "out"
    manifest = build_corpus(BuildConfig.from_yaml(config), out, log=lambda m: None)
    samples = list(iter_samples(out))
    assert manifest.origin["sources"]["t1"]["records"] == 3
    assert {s.provenance["slice"] for s in samples} == {5, 12, 18} or len({s.provenance["slice"] for s in samples}) == 3
    assert all(s.images()[0].format == "png" for s in samples)


def test_ct_window_presets() -> None:
    from unimedvl.imaging.intensity import CT_WINDOWS, window

    hu = np.array([[-1350.0, -600.0, 0.0, 40.0, 150.0, 240.0]])
    lung = window(hu, *CT_WINDOWS["lung"])  # centre -600, width 1500
    soft = window(hu, *CT_WINDOWS["soft_tissue"])  # centre 40, width 400
    assert lung[0, 0] == 0 and lung[0, 1] == 128 and lung[0, 4] == 255
    assert soft[0, 1] == 0 and soft[0, 3] == 128 and soft[0, 5] == 255


def test_a_missing_dicom_folder_named_after_a_patient_stays_out_of_reports_and_logs(tmp_path: Path, capsys) -> None:
    """Issue 13, item 6: the missing path (a name and an MRN) was written into qc/stage1.*."""
    _make_dicoms(tmp_path / "dicom")
    config = write_config(tmp_path, [
        {"name": "dicom-set", "adapter": "dicom", "path": "dicom", "licence": "test", "tasks": ["vqa"]},
        {"name": "lost", "adapter": "dicom", "path": "Doe^Johnathan_MRN4417730", "licence": "test", "tasks": ["vqa"]}],
        splits={"train": 1.0})
    out = tmp_path / "out"
    build_corpus(BuildConfig.from_yaml(config), out, log=print)
    assert "source folder or file not found" in (out / "qc/stage1.md").read_text()
    written = _all_output_text(out) + capsys.readouterr().err.encode() + capsys.readouterr().out.encode()
    for identifier in ("Johnathan", "4417730"):
        assert identifier.encode() not in written, identifier


def test_the_pseudonym_salt_never_lives_in_the_corpus_folder(tmp_path: Path, monkeypatch) -> None:
    """Issue 13, item 6: the salt was stored in OUT/work/deid_salt."""
    import os

    monkeypatch.setenv("UNIMEDVL_SECRETS_DIR", str(tmp_path / "secrets"))
    _make_dicoms(tmp_path / "dicom")
    sources = [{"name": "dicom-set", "adapter": "dicom", "path": "dicom", "licence": "test", "tasks": ["vqa"]}]
    config = write_config(tmp_path, sources, splits={"train": 1.0})
    text = config.read_text().replace("deid_salt: test-salt\n", "")
    config.write_text(text)
    out = tmp_path / "out"
    build_corpus(BuildConfig.from_yaml(config), out, log=lambda m: None)
    secret = (tmp_path / "secrets" / "deid_salt").read_text().strip()
    assert len(secret) == 32 and oct(os.stat(tmp_path / "secrets" / "deid_salt").st_mode)[-3:] == "600"
    assert not any(secret.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())
    groups = {s.group for s in iter_samples(out)}
    build_corpus(BuildConfig.from_yaml(config), tmp_path / "again", log=lambda m: None)
    assert {s.group for s in iter_samples(tmp_path / "again")} == groups  # the same secret: the same pseudonyms
