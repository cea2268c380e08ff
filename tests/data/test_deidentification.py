"""De-identification against the DICOM basic confidentiality profile (PS3.15 Annex E), issue 13 item 6.

The walk below is a superset of the profile's table: every tag in pydicom's data dictionary that can hold
text, a date, a UID or a number-as-string (Annex E's tags are all among them) is filled with a value unique
to that tag, every sequence gets an item holding a name, and the file and folder carry a name and an MRN.
A corpus is built from it; no value may reach a shard, a report, the card or a log.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from data_helpers import write_config
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_medical_formats import _all_output_text

from unimedvl.data.pipeline import BuildConfig, build_corpus
from unimedvl.data.storage import iter_samples
from unimedvl.imaging.dicom_tags import TECHNICAL_TAGS, technical_tags, vetted_value

TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
NUMBER_STRING_VRS = {"DS", "IS"}
# Read by the pipeline to place and display pixels (image module, geometry, the character set); checked apart.
PIPELINE_TAGS = {"SpecificCharacterSet", "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber",
                 "SeriesInstanceUID", *TECHNICAL_TAGS}
# Annex E's table names these (among ~600); the walk must cover every one.
ANNEX_E_SAMPLE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientAddress",
                  "OtherPatientIDs", "OtherPatientNames", "PatientMotherBirthName", "MilitaryRank", "EthnicGroup",
                  "PatientWeight", "PatientSize", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
                  "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "AccessionNumber", "StudyID",
                  "StudyDate", "StudyTime", "AcquisitionDateTime", "StudyDescription", "SeriesDescription",
                  "ImageComments", "StationName", "DeviceSerialNumber", "StudyInstanceUID", "SOPInstanceUID",
                  "FrameOfReferenceUID", "RequestAttributesSequence", "ReferencedPatientSequence",
                  "AdditionalPatientHistory", "PatientComments", "InstitutionalDepartmentName", "ProtocolName")


def _walked_dataset(base: Dataset) -> tuple[Dataset, dict[str, str]]:
    """`base` with every walkable tag set to its own sentinel; returns (dataset, {keyword: sentinel})."""
    sentinels: dict[str, str] = {}
    for index, (tag, entry) in enumerate(sorted(DicomDictionary.items())):
        vr, keyword = entry[0], keyword_for_tag(tag)
        group = tag >> 16
        if not keyword or keyword in PIPELINE_TAGS or group in (0x0000, 0x0002, 0x0028, 0x7FE0):
            continue
        if vr in TEXT_VRS:
            value = f"ZQ{index:04X}"
        elif vr == "UI":
            value = f"1.2.999.{index}"
        elif vr in NUMBER_STRING_VRS:
            value = f"7371{index:04d}"
        elif vr == "SQ":
            item = Dataset()
            item.PatientName = value = f"ZS{index:04X}"
            base.add_new(tag, vr, Sequence([item]))
            sentinels[keyword] = value
            continue
        else:
            continue
        base.add_new(tag, vr, value)
        sentinels[keyword] = value
    base.PatientID = sentinels["PatientID"] = "MRN4417730"
    base.SeriesInstanceUID = sentinels["SeriesInstanceUID"] = "1.2.999.424242"
    return base, sentinels


def test_no_value_of_any_dicom_tag_and_no_file_or_folder_name_reaches_the_corpus(tmp_path: Path, capsys,
                                                                                  monkeypatch) -> None:
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    dataset, sentinels = _walked_dataset(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    dataset.BodyPartExamined = "CHEST Doe^Johnathan"  # free text in a kept, coded tag
    folder = tmp_path / "dicom" / "Doe^Johnathan_MRN4417730"
    folder.mkdir(parents=True)
    dataset.save_as(folder / "Johnathan_Doe_19610203.dcm")
    assert len(sentinels) > 3000 and set(ANNEX_E_SAMPLE) <= set(sentinels)

    config = write_config(tmp_path, [{"name": "walk", "adapter": "dicom", "path": "dicom", "licence": "test",
                                      "tasks": ["vqa", "text_to_image", "report"]}], splits={"train": 1.0})
    out = tmp_path / "out"
    build_corpus(BuildConfig.from_yaml(config), out, log=print)
    samples = list(iter_samples(out))
    assert samples and samples[0].modality == "ct"  # the series was used, not dropped
    written = _all_output_text(out) + capsys.readouterr().out.encode() + capsys.readouterr().err.encode()
    leaked = [keyword for keyword, value in sentinels.items() if value.encode() in written]
    assert not leaked, leaked
    for word in ("Johnathan", "4417730", "19610203"):
        assert word.encode() not in written, word
    assert "BodyPartExamined" not in samples[0].provenance
    assert samples[0].provenance["withheld_tags"] == ["BodyPartExamined"]
    assert samples[0].provenance["Modality"] == "CT" and samples[0].provenance["Rows"] == 128


@pytest.mark.parametrize(("tag", "value", "kept"), [
    ("BodyPartExamined", "CHEST", "CHEST"), ("BodyPartExamined", "chest ", "CHEST"),
    ("BodyPartExamined", "CHEST Doe^Johnathan", None), ("BodyPartExamined", "DOE", None),
    ("Modality", "CT", "CT"), ("Modality", "Jane Doe", None), ("PhotometricInterpretation", "MONOCHROME2", "MONOCHROME2"),
    ("Rows", 512, 512), ("Rows", "512 Doe", None), ("Rows", 3.5, None), ("SliceThickness", "2.5", 2.5),
    ("SliceThickness", "nan", None), ("SliceThickness", "1e999", None), ("PixelSpacing", ["0.5", "0.5"], [0.5, 0.5]),
    ("PixelSpacing", ["0.5", "MRN123"], None), ("PatientName", "Doe^Jane", None),
])
def test_a_kept_tag_is_kept_only_when_its_value_has_the_tags_shape(tag: str, value, kept) -> None:
    assert vetted_value(tag, value) == kept


def test_a_series_with_burned_in_annotation_is_refused(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.BurnedInAnnotation = "YES"
    assert technical_tags(dataset)[0]["BurnedInAnnotation"] == "YES"
    (tmp_path / "dicom").mkdir()
    dataset.save_as(tmp_path / "dicom" / "a.dcm")
    config = write_config(tmp_path, [{"name": "burned", "adapter": "dicom", "path": "dicom", "licence": "test",
                                      "tasks": ["vqa"]}], splits={"train": 1.0})
    out = tmp_path / "out"
    manifest = build_corpus(BuildConfig.from_yaml(config), out, log=lambda m: None)
    assert manifest.origin["qc"]["input_errors"] == 1
    assert "BurnedInAnnotation is YES" in (out / "qc/stage1.md").read_text()


def test_nifti_header_text_and_file_names_stay_out_of_the_corpus(tmp_path: Path, capsys) -> None:
    import nibabel
    import numpy as np

    image = nibabel.Nifti1Image(np.random.default_rng(0).random((64, 64, 6)).astype(np.float32), np.eye(4))
    image.header["descrip"] = b"Doe^Johnathan MRN4417730"
    image.header["aux_file"] = b"ZQNIFTI"
    (tmp_path / "nifti" / "Doe_Johnathan").mkdir(parents=True)
    nibabel.save(image, tmp_path / "nifti" / "Doe_Johnathan" / "MRN4417730_t1.nii.gz")
    config = write_config(tmp_path, [{"name": "vol", "adapter": "nifti", "path": "nifti", "modality": "mri",
                                      "licence": "test", "tasks": ["vqa"]}], splits={"train": 1.0})
    out = tmp_path / "out"
    build_corpus(BuildConfig.from_yaml(config), out, log=print)
    assert list(iter_samples(out))
    written = _all_output_text(out) + capsys.readouterr().out.encode() + capsys.readouterr().err.encode()
    for word in ("Johnathan", "4417730", "ZQNIFTI"):
        assert word.encode() not in written, word
