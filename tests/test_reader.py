"""The one medical image reader (issue 15, item 1): PNG / JPEG / 16-bit PNG, DICOM and NIfTI, from paths or bytes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from unimedvl.data.sources.base import pil_to_uint8
from unimedvl.errors import InputError
from unimedvl.imaging.intensity import grey_to_uint8, parse_window
from unimedvl.imaging.pixels import load_image
from unimedvl.imaging.reader import ReadOptions, detect_format, read_medical_image

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_ct_dicom_is_windowed_and_carries_no_identifier(tmp_path: Path) -> None:
    scan = read_medical_image(CT)
    assert scan.format == "dicom" and scan.modality == "ct" and scan.image.size == (128, 128)
    assert scan.metadata["Modality"] == "CT" and scan.metadata["window"] == [40.0, 400.0]  # soft tissue default
    text = repr(scan.metadata)
    ds = pydicom.dcmread(CT)
    for identifier in (str(ds.PatientName), str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.StudyDate)):
        assert identifier and identifier not in text
    lung = np.asarray(read_medical_image(CT, options=ReadOptions(window="lung")).image)
    bone = np.asarray(read_medical_image(CT, options=ReadOptions(window=(400, 1800))).image)
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    expected_lung = np.clip((hu - (-600 - 750)) / 1500 * 255 + 0.5, 0, 255.5).astype(np.uint8)
    assert np.array_equal(lung[..., 0], np.minimum(expected_lung, 255))
    assert not np.array_equal(lung, bone)


def test_file_window_used_for_ct_when_none_is_given() -> None:
    ds = pydicom.dcmread(CT)
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    scan = read_medical_image(_dicom_bytes(ds))
    assert scan.metadata["window"] == [-600.0, 1500.0]
    assert np.array_equal(np.asarray(scan.image), np.asarray(read_medical_image(CT, options=ReadOptions(window="lung")).image))


def test_monochrome1_is_inverted_and_voi_applied() -> None:
    ds = pydicom.dcmread(MR)
    ds.Modality = "CR"
    plain = np.asarray(read_medical_image(_dicom_bytes(ds)).image).astype(int)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = np.asarray(read_medical_image(_dicom_bytes(ds)).image).astype(int)
    assert np.array_equal(inverted, 255 - plain)
    assert plain.std() > 20  # a real picture, not a flat or saturated one


def test_multi_frame_choice(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT)
    base = ds.pixel_array.astype(np.int16)
    frames = np.stack([base + 300 * i for i in range(5)])
    ds.NumberOfFrames = 5
    ds.PixelData = frames.tobytes()
    path = tmp_path / "multi.dcm"
    ds.save_as(path, enforce_file_format=True)
    middle = read_medical_image(path)
    assert middle.metadata["frame"] == 2 and middle.metadata["frames"] == 5
    first = read_medical_image(path, options=ReadOptions(slice_index=0))
    assert np.asarray(first.image).mean() < np.asarray(middle.image).mean()
    with pytest.raises(InputError, match="frame 9 requested, the file has 5"):
        read_medical_image(path, options=ReadOptions(slice_index=9))


def test_dicom_without_preamble_needs_the_hint_or_the_suffix(tmp_path: Path) -> None:
    data = CT.read_bytes()[132:]  # no preamble, no DICM
    assert detect_format(data[:512]) == "other"
    assert read_medical_image(data, format="dicom").format == "dicom"
    (tmp_path / "raw.dcm").write_bytes(data)
    assert read_medical_image(tmp_path / "raw.dcm").format == "dicom"


def test_dicom_size_checked_before_decoding() -> None:
    ds = pydicom.dcmread(CT)
    ds.Rows, ds.Columns = 60000, 60000  # a header claiming 3.6 G pixels over 32 KB of data
    with pytest.raises(InputError, match="more than this reader accepts"):
        read_medical_image(_dicom_bytes(ds))


def test_burned_in_annotation_refused() -> None:
    ds = pydicom.dcmread(CT)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(InputError, match="BurnedInAnnotation"):
        read_medical_image(_dicom_bytes(ds))


def _volume(affine: np.ndarray | None = None) -> tuple[np.ndarray, nibabel.Nifti1Image]:
    data = np.zeros((20, 24, 12), dtype=np.float32)
    data += np.arange(12, dtype=np.float32)[None, None, :] * 10  # brighter along z
    data[2:6, 3:9, :] += 500  # a block near one corner: shows orientation
    return data, nibabel.Nifti1Image(data, np.eye(4) if affine is None else affine)


def test_nifti_slices_axis_and_gzip(tmp_path: Path) -> None:
    data, image = _volume()
    raw = image.to_bytes()
    middle = read_medical_image(raw, name="vol.nii")
    assert middle.format == "nifti" and middle.metadata["slice"] == 6 and middle.metadata["slices"] == 12
    assert middle.image.size == (20, 24)  # x across, y up after the display rotation
    expected = grey_to_uint8(np.rot90(data[:, :, 6]), "mri")
    assert np.array_equal(np.asarray(middle.image)[..., 0], expected)
    sagittal = read_medical_image(raw, options=ReadOptions(axis=0, slice_index=3))
    assert sagittal.image.size == (24, 12) and sagittal.metadata["axis"] == 0
    path = tmp_path / "vol.nii.gz"
    path.write_bytes(gzip.compress(raw))
    assert np.array_equal(np.asarray(read_medical_image(path).image), np.asarray(middle.image))
    with pytest.raises(InputError, match="slice 40 requested, the volume has 12"):
        read_medical_image(path, options=ReadOptions(slice_index=40))


def test_nifti_canonical_orientation() -> None:
    data, plain = _volume()
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped_affine[0, 3] = 19  # the same voxels in space, stored left-right reversed
    flipped = nibabel.Nifti1Image(data[::-1].copy(), flipped_affine)
    a = np.asarray(read_medical_image(plain.to_bytes()).image)
    b = np.asarray(read_medical_image(flipped.to_bytes()).image)
    assert np.array_equal(a, b)


def test_nifti_ct_window_and_gzip_bomb() -> None:
    data, image = _volume()
    windowed = read_medical_image(image.to_bytes(), options=ReadOptions(modality="ct", window="brain"))
    assert windowed.metadata["window"] == [40.0, 80.0]
    bomb = gzip.compress(b"\x00" * (8 << 20))
    with pytest.raises(InputError, match="decompresses to more than"):
        read_medical_image(bomb, name="bomb.nii.gz", max_bytes=1 << 20)


def test_sixteen_bit_png_uses_the_corpus_rule_everywhere(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = (rng.normal(1200, 300, (48, 40)).clip(0, 4095)).astype(np.uint16)
    grey[:2, :2] = 65535  # a few saturated pixels: a min-max stretch would make the rest near black
    path = tmp_path / "mri16.png"
    Image.fromarray(grey).save(path)
    read = np.asarray(load_image(path))
    corpus = np.asarray(pil_to_uint8(Image.open(path)).convert("RGB"))
    assert np.array_equal(read, corpus)
    assert 60 < read.mean() < 200 and read.std() > 20
    assert read_medical_image(path).metadata["bits"] == 16


def test_pictures_and_bad_input(tmp_path: Path) -> None:
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 20, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    scan = read_medical_image(buffer.getvalue())
    assert scan.format == "png" and np.array_equal(np.asarray(scan.image), np.asarray(rgb))
    with pytest.raises(InputError, match="empty file"):
        read_medical_image(b"")
    with pytest.raises(InputError, match="cannot read image"):
        read_medical_image(b"not an image at all")
    with pytest.raises(InputError, match="not found"):
        read_medical_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="more than the 10 accepted"):
        read_medical_image(buffer.getvalue(), max_bytes=10)
    with pytest.raises(InputError, match="unknown window"):
        ReadOptions(window="lungs")
    with pytest.raises(InputError, match="slice must be"):
        ReadOptions(slice_index=-1)


def test_parse_window() -> None:
    assert parse_window("lung") == "lung"
    assert parse_window("-600,1500") == (-600.0, 1500.0)
    for bad in ("lungs", "1,2,3", "a,b", "40,0", "40,-5"):
        with pytest.raises(ValueError):
            parse_window(bad)
