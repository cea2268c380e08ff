"""Which DICOM header values may leave a reader: a short allowlist of technical tags, each vetted.

De-identification here is an allowlist, the stricter reading of the DICOM basic confidentiality
profile (PS3.15 Annex E): every tag not named below is dropped, whatever it holds. A kept tag is
kept only when its value has the shape its tag allows - a number for the numeric tags, a term
from a closed vocabulary for the coded ones - because free text typed into a coded field
("CHEST Doe^Johnathan") is how names leak through allowlists. A value that fails is withheld
and counted, never copied.
"""

from __future__ import annotations

import math
import re
from typing import Any

# DICOM Modality defined terms (PS3.3 C.7.3.1.1.1) that medical imaging sources use.
MODALITY_TERMS = frozenset({
    "CR", "CT", "DX", "ECG", "ES", "GM", "IO", "IVOCT", "IVUS", "MG", "MR", "NM", "OCT", "OP", "OPT", "OT",
    "PT", "PX", "RF", "RG", "SC", "SM", "US", "XA", "XC"})
# Body part examined: the common defined terms of PS3.16 Annex L (CID 4031) in the CS form DICOM uses.
BODY_PART_TERMS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "ANKLE", "ARM", "BRAIN", "BREAST", "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS",
    "CLAVICLE", "COCCYX", "CSPINE", "ELBOW", "EXTREMITY", "EYE", "FACE", "FINGER", "FOOT", "HAND", "HEAD",
    "HEADNECK", "HEART", "HIP", "JAW", "KIDNEY", "KNEE", "LEG", "LIVER", "LSPINE", "LUNG", "NECK", "ORBIT",
    "PANCREAS", "PELVIS", "PROSTATE", "RIB", "SACRUM", "SHOULDER", "SKULL", "SPINE", "SSPINE", "STOMACH",
    "TSPINE", "THORAX", "WHOLEBODY", "WRIST", "COLON", "ESOPHAGUS", "RETINA", "SKIN", "THYROID", "UTERUS",
    "BLADDER"})
PHOTOMETRIC_TERMS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420",
    "YBR_ICT", "YBR_RCT"})
CODED_TAGS = {"Modality": MODALITY_TERMS, "BodyPartExamined": BODY_PART_TERMS,
              "PhotometricInterpretation": PHOTOMETRIC_TERMS, "BurnedInAnnotation": frozenset({"YES", "NO"})}
INTEGER_TAGS = ("Rows", "Columns", "BitsStored", "NumberOfFrames")
NUMBER_TAGS = ("PixelSpacing", "SliceThickness")  # DS: decimal strings, one or more values
TECHNICAL_TAGS = (*CODED_TAGS, *INTEGER_TAGS, *NUMBER_TAGS)

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _coded(value: Any, terms: frozenset[str]) -> str | None:
    text = str(value).strip().upper()
    return text if text in terms else None


def _number(value: Any, integer: bool) -> float | int | None:
    text = str(value).strip()
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    if not math.isfinite(number) or (integer and not number.is_integer()):
        return None
    return int(number) if integer else number


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def vetted_value(tag: str, value: Any) -> Any:
    """The value of a technical tag as plain JSON, or None when it does not have the tag's shape."""
    if value is None or tag not in TECHNICAL_TAGS:
        return None
    if tag in CODED_TAGS:
        return _coded(value, CODED_TAGS[tag]) if not isinstance(value, (list, tuple)) else None
    numbers = [_number(v, tag in INTEGER_TAGS) for v in _values(value)]
    if not numbers or any(n is None for n in numbers) or len(numbers) > 3:
        return None
    return numbers if tag == "PixelSpacing" else (numbers[0] if len(numbers) == 1 else None)


def technical_tags(dataset: Any) -> tuple[dict[str, Any], list[str]]:
    """(kept values, names of tags withheld because their value failed its check) for a pydicom dataset."""
    kept: dict[str, Any] = {}
    withheld: list[str] = []
    for tag in TECHNICAL_TAGS:
        if tag not in dataset:
            continue
        try:
            raw = dataset.get(tag)
        except Exception:  # noqa: BLE001  (a malformed element raises on access)
            raw = None
        value = vetted_value(tag, raw)
        if value is None:
            withheld.append(tag)
        else:
            kept[tag] = value
    return kept, withheld
