"""Table layouts: MedMNIST .npz, image tables (CSV), image-report tables (IU X-ray), VQA sets."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from unimedvl.data.sources.base import (
    Adapter,
    RawRecord,
    RecordError,
    encode_png,
    image_ref_from_bytes,
    read_image_file,
    register,
)

_MODALITY_WORDS = (
    ("chest_xray", r"\b(x-?ray|radiograph|cxr)\b"), ("ct", r"\b(ct|computed tomography)\b"),
    ("mri", r"\b(mri?|magnetic resonance|t1|t2|flair)\b"), ("ultrasound", r"\b(ultrasound|sonograph\w*|us)\b"),
)


def guess_modality(text: str, default: str | None) -> str | None:
    for modality, pattern in _MODALITY_WORDS:
        if re.search(pattern, text.lower()):
            return modality
    return default


@register("medmnist")
class MedMNIST(Adapter):
    """A MedMNIST `.npz` (`{split}_images`, `{split}_labels`); options: label_names {int: text}, splits."""

    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self._arrays: dict[str, np.ndarray] | None = None

    def _load_arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            try:
                with np.load(self.config.path, allow_pickle=False) as data:
                    self._arrays = {k: data[k] for k in data.files}
            except (OSError, ValueError) as exc:
                raise RecordError(f"{self.config.path.name}: not a readable .npz ({exc})") from None
        return self._arrays

    def refs(self) -> list[tuple[str, int]]:
        arrays = self._load_arrays()
        splits = self.config.options.get("splits") or sorted(k[: -len("_images")] for k in arrays if k.endswith("_images"))
        out = []
        for split in splits:
            if f"{split}_images" not in arrays or f"{split}_labels" not in arrays:
                raise RecordError(f"{self.config.path.name}: missing {split}_images / {split}_labels")
            out += [(split, i) for i in range(len(arrays[f"{split}_images"]))]
        return out

    def load(self, ref: tuple[str, int]) -> RawRecord:
        split, index = ref
        arrays = self._load_arrays()
        image = arrays[f"{split}_images"][index]
        label = int(np.asarray(arrays[f"{split}_labels"][index]).reshape(-1)[0])
        names = {int(k): v for k, v in self.config.options.get("label_names", {}).items()}
        return self.record(f"{split}/{index}", images=[encode_png(image.astype(np.uint8))],
                           label=names.get(label, str(label)), official_split="val" if split == "val" else split,
                           provenance={"split": split, "index": index, "label_id": label})


def _read_table(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise RecordError(f"{path.name}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise RecordError(f"{path.name}: expected a JSON list of entries")
            return data
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordError(f"{path.name}: malformed ({exc})") from None
    except OSError as exc:
        raise RecordError(f"{path.name}: cannot read ({exc})") from None
    raise RecordError(f"{path.name}: unsupported table format {suffix!r} (csv, json, jsonl or parquet; pickle is not read)")


def _field(entry: dict[str, Any], name: str, where: str) -> Any:
    value = entry.get(name) if isinstance(entry, dict) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(f"{where}: missing {name!r}")
    return value


@register("image_table")
class ImageTable(Adapter):
    """A CSV/JSON table with `path` and any of `label`, `caption`, `modality`, `group`, `split`."""

    def refs(self) -> list[int]:
        self._rows = _read_table(self.config.path / self.config.options.get("table", "labels.csv"))
        return list(range(len(self._rows)))

    def load(self, ref: int) -> RawRecord:
        if not hasattr(self, "_rows"):
            self.refs()
        row = self._rows[ref]
        rel = _field(row, "path", f"row {ref + 1}")
        return self.record(str(rel), images=[read_image_file(self.config.path / rel)], label=row.get("label") or None,
                           caption=row.get("caption") or None, modality=row.get("modality") or None,
                           group=row.get("group") or None, official_split=row.get("split") or None,
                           provenance={"path": rel})


@register("image_report")
class ImageReport(Adapter):
    """IU X-ray layout: `indiana_reports.csv` (uid, findings, impression) + `indiana_projections.csv`
    (uid, filename, projection) + an image folder. options: reports, projections, images_dir, projection."""

    def refs(self) -> list[int]:
        opts = self.config.options
        reports = {r["uid"]: r for r in _read_table(self.config.path / opts.get("reports", "indiana_reports.csv"))}
        projections = _read_table(self.config.path / opts.get("projections", "indiana_projections.csv"))
        wanted = opts.get("projection", "Frontal")
        self._rows = [(p, reports.get(p.get("uid"))) for p in projections if not wanted or p.get("projection") == wanted]
        return list(range(len(self._rows)))

    def load(self, ref: int) -> RawRecord:
        if not hasattr(self, "_rows"):
            self.refs()
        projection, report = self._rows[ref]
        where = f"projection row {ref + 1}"
        if report is None:
            raise RecordError(f"{where}: no report for uid {projection.get('uid')!r}")
        findings, impression = (report.get("findings") or "").strip(), (report.get("impression") or "").strip()
        if not findings and not impression:
            raise RecordError(f"{where}: empty report")
        text = " ".join(x for x in (f"Findings: {findings}" if findings else "",
                                    f"Impression: {impression}" if impression else "") if x)
        filename = _field(projection, "filename", where)
        image = read_image_file(self.config.path / self.config.options.get("images_dir", "images") / filename)
        return self.record(filename, images=[image], report=text, group=f"uid-{projection['uid']}",
                           modality="chest_xray", provenance={"uid": projection["uid"], "filename": filename})


@register("vqa")
class VQASet(Adapter):
    """VQA sets in their official layouts. options.format:

    * `vqa_rad`: JSON list with image_name, question, answer, answer_type (+ image_organ); images in images_dir;
    * `slake`: JSON list with img_name, question, answer, q_lang, modality, answer_type; English kept;
    * `pathvqa`: a table (parquet/jsonl/json/csv) with image (path or bytes), question, answer.
    """

    SLAKE_MODALITY = {"ct": "ct", "mri": "mri", "x-ray": "chest_xray", "xray": "chest_xray"}

    def refs(self) -> list[int]:
        opts = self.config.options
        fmt = opts.get("format")
        if fmt not in ("vqa_rad", "slake", "pathvqa"):
            raise RecordError(f"{self.config.name}: options.format must be vqa_rad, slake or pathvqa, got {fmt!r}")
        default = {"vqa_rad": "VQA_RAD Dataset Public.json", "slake": "train.json", "pathvqa": "train.parquet"}[fmt]
        rows = _read_table(self.config.path / opts.get("annotations", default))
        if fmt == "slake":
            rows = [r for r in rows if not isinstance(r, dict) or r.get("q_lang", "en") == "en"]
        self._rows = rows
        return list(range(len(rows)))

    def load(self, ref: int) -> RawRecord:
        if not hasattr(self, "_rows"):
            self.refs()
        entry = self._rows[ref]
        fmt, opts = self.config.options["format"], self.config.options
        where = f"{self.config.name} entry {ref + 1}"
        question = str(_field(entry, "question", where)).strip()
        answer = str(_field(entry, "answer", where)).strip()
        images_dir = self.config.path / opts.get("images_dir", "images" if fmt != "slake" else "imgs")
        if fmt == "vqa_rad":
            name = _field(entry, "image_name", where)
            image = read_image_file(images_dir / name)
            modality = guess_modality(f"{question} {answer}", self.config.modality)
            group = f"img-{name}"
        elif fmt == "slake":
            name = _field(entry, "img_name", where)
            image = read_image_file(images_dir / name)
            modality = self.SLAKE_MODALITY.get(str(entry.get("modality", "")).lower(), self.config.modality)
            group = f"img-{Path(name).parent}"
        else:
            raw = _field(entry, "image", where)
            if isinstance(raw, dict) and "bytes" in raw:
                image = image_ref_from_bytes(raw["bytes"], where)
            elif isinstance(raw, (bytes, bytearray)):
                image = image_ref_from_bytes(bytes(raw), where)
            else:
                image = read_image_file(images_dir / str(raw))
            modality = self.config.modality or "histopathology"
            group = f"img-{image.sha256[:16]}"
        return self.record(f"{ref}", images=[image], question=question, answer=answer, modality=modality,
                           answer_type=str(entry.get("answer_type", "")).lower() or None, group=group,
                           provenance={"entry": ref, "qid": entry.get("qid")})
