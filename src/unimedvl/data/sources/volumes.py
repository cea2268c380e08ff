"""DICOM series and NIfTI volumes -> de-identified 8-bit slices.

DICOM: files are grouped by series, ordered by position; each slice is displayed by the one
medical image reader's rules (`imaging/reader.py`: modality LUT, CT window preset, MR percentiles,
VOI LUT for radiographs, MONOCHROME1 inverted).
No patient identifier reaches a record: the group is a salted hash of PatientID, keys are hashes,
and provenance keeps only the vetted technical tags of `imaging/dicom_tags.py`. A series whose
header says its pixels carry burned-in annotation is refused (the text would be in the image).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from unimedvl.data.sources.base import Adapter, RawRecord, RecordError, encode_png, register
from unimedvl.imaging.dicom_tags import technical_tags
from unimedvl.imaging.intensity import DEFAULT_CT_WINDOW, grey_to_uint8
from unimedvl.imaging.reader import DICOM_MODALITY, dicom_display, nifti_slice

MAX_SLICE_SIDE = 8192  # larger planes are a damaged header, not a scan


def pseudonym(value: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}\x1f{value}".encode()).hexdigest()[:16]


def select_slices(count: int, how: Any) -> list[int]:
    if how in (None, "middle"):
        return [count // 2]
    if how == "all":
        return list(range(count))
    n = int(how)
    if n <= 0:
        raise RecordError("slices must be 'middle', 'all' or a positive number")
    return sorted({int(round(x)) for x in np.linspace(count * 0.2, count * 0.8 - 1, n)}) if count > n else list(range(count))


def _display(ds: Any, frame: np.ndarray, modality: str, options: dict[str, Any]) -> np.ndarray:
    # The corpus windows CT with its configured preset (soft tissue unless the source says otherwise).
    return dicom_display(ds, frame, modality, options.get("window", DEFAULT_CT_WINDOW) if modality == "ct" else None)


@register("dicom")
class DicomSeries(Adapter):
    """A folder of DICOM files (any depth). options: window (CT preset or [center, width]), slices
    ('middle' | N | 'all'), deid_salt (set by the build)."""

    def refs(self) -> list[tuple[str, list[str]]]:
        import pydicom

        series: dict[str, list[tuple[float, str]]] = {}
        self._bad: list[str] = []
        for path in sorted(p for p in self.config.path.rglob("*") if p.is_file()):
            rel = str(path.relative_to(self.config.path))
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                uid = str(ds.get("SeriesInstanceUID", rel))
                position = ds.get("ImagePositionPatient")
                order = float(position[2]) if position else float(ds.get("InstanceNumber", 0) or 0)
            except Exception:  # noqa: BLE001  (pydicom raises many types for non-DICOM files)
                if path.suffix.lower() in (".dcm", ".dicom", ""):
                    self._bad.append(rel)
                continue
            series.setdefault(uid, []).append((order, rel))
        refs: list[tuple[str, list[str]]] = [("bad", [rel]) for rel in self._bad]
        for uid in sorted(series):
            refs.append((uid, [rel for _, rel in sorted(series[uid])]))
        return refs

    def load(self, ref: tuple[str, list[str]]) -> list[RawRecord | RecordError]:
        import pydicom

        uid, files = ref
        salt = str(self.config.options.get("deid_salt", ""))
        series_key = pseudonym(uid, salt)
        if uid == "bad":
            raise RecordError(f"file {pseudonym(files[0], salt)}: not a readable DICOM file")
        frames: list[tuple[Any, np.ndarray]] = []
        problems: list[RecordError] = []
        for rel in files:
            try:
                ds = pydicom.dcmread(self.config.path / rel)
                pixels = ds.pixel_array
                single = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3
                                              and int(ds.get("NumberOfFrames", 1) or 1) == 1)
            except Exception as exc:  # noqa: BLE001  (pydicom raises many types for damaged files)
                # One bad slice is reported on its own; the rest of the series is still used.
                problems.append(RecordError(f"series {series_key}, file {pseudonym(rel, salt)}: unreadable or "
                                            f"truncated DICOM ({type(exc).__name__})"))
                continue
            frames.extend([(ds, pixels)] if single else [(ds, frame) for frame in pixels])
        if not frames:
            return problems
        first = frames[0][0]
        tags, withheld = technical_tags(first)
        if tags.get("BurnedInAnnotation") == "YES":
            return [RecordError(f"series {series_key}: BurnedInAnnotation is YES (text in the pixels may identify "
                                "the patient); not used"), *problems]
        modality = self.config.modality or DICOM_MODALITY.get(tags.get("Modality", ""), "other")
        try:
            # Without a readable PatientID the series cannot be kept to one side of a patient-level split.
            group = pseudonym(str(first.get("PatientID", "") or uid), salt)
        except Exception as exc:  # noqa: BLE001
            return [RecordError(f"series {series_key}: damaged PatientID element ({type(exc).__name__}); "
                                "not used"), *problems]
        provenance = {**tags, **({"withheld_tags": withheld} if withheld else {})}
        records: list[RawRecord | RecordError] = []
        for index in select_slices(len(frames), self.config.options.get("slices", "middle")):
            ds, frame = frames[index]
            try:
                image = encode_png(_display(ds, np.asarray(frame), modality, self.config.options))
            except Exception as exc:  # noqa: BLE001  (a damaged LUT, window or photometric element)
                problems.append(RecordError(f"series {series_key}, slice {index}: cannot be displayed "
                                            f"({type(exc).__name__})"))
                continue
            records.append(self.record(f"{series_key}/{index}", images=[image], modality=modality, group=group,
                                       provenance={**provenance, "slice": index, "slices": len(frames)}))
        return [*records, *problems]


@register("nifti")
class NiftiVolumes(Adapter):
    """NIfTI files (`.nii`, `.nii.gz`). options: axis (0/1/2, default 2 = axial after canonical
    reorientation), slices ('middle' | N | 'all'), window (CT) - MR is percentile-normalised."""

    def refs(self) -> list[str]:
        root = self.config.path
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.name.endswith((".nii", ".nii.gz")))
        return [str(p.relative_to(root.parent if root.is_file() else root)) for p in files]

    def load(self, ref: str) -> list[RawRecord]:
        import nibabel as nib

        root = self.config.path.parent if self.config.path.is_file() else self.config.path
        salt = str(self.config.options.get("deid_salt", ""))
        key = pseudonym(ref, salt)
        try:
            volume = nib.as_closest_canonical(nib.load(str(root / ref)))
            data = np.asarray(volume.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise RecordError(f"volume {key}: unreadable NIfTI ({type(exc).__name__})") from None
        if data.ndim == 4:
            data = data[..., 0]
        if data.ndim != 3:
            raise RecordError(f"volume {key}: expected a 3-D volume, got shape {data.shape}")
        axis = int(self.config.options.get("axis", 2))
        plane_shape = [n for i, n in enumerate(data.shape) if i != axis]
        if min(data.shape) < 1 or min(plane_shape) < 2 or max(plane_shape) > MAX_SLICE_SIDE:
            raise RecordError(f"volume {key}: shape {list(data.shape)} gives no usable slices along axis {axis} "
                              f"(each side 2 to {MAX_SLICE_SIDE} px)")
        if not np.isfinite(data).all():  # NaN / inf voxels (a damaged or float-overflowing file) read as background
            data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        modality = self.config.modality or "mri"
        records = []
        for index in select_slices(data.shape[axis], self.config.options.get("slices", "middle")):
            plane = nifti_slice(data, axis, index)
            try:
                pixels = grey_to_uint8(plane, modality, self.config.options.get("window") if modality == "ct" else None)
            except ValueError as exc:  # an unknown window preset or a malformed [center, width]
                raise RecordError(f"volume {key}: {exc}") from None
            records.append(self.record(f"{key}/{index}", images=[encode_png(pixels)],
                                       group=key, provenance={"axis": axis, "slice": index,
                                                              "shape": list(data.shape),
                                                              "zooms": [float(z) for z in volume.header.get_zooms()[:3]]}))
        return records
