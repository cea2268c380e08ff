"""The corpus sample schema (versioned), and how it maps onto the model's packed segments.

A sample is an ordered list of items; each item is text or an image, with a role and a loss flag:

    Item(kind="text",  role="user"|"assistant"|"system", text=..., loss=bool)
    Item(kind="image", role=..., image=ImageRef, use="vit"|"vae"|"vae+vit", loss=bool)

Mapping onto the segments of a packed sequence (`model/packing.py`; the one implementation is
`train/packer.py: plan_sample`, used by training and held-out evaluation):
* text item           -> `TextSegment`; `loss` = cross-entropy on its tokens (assistant turns);
* image, use="vit"    -> `VitSegment` (understanding input, never a loss);
* image, use="vae"    -> `LatentSegment`: `loss=True` means it is generated (noisy latents, MSE loss),
                         `loss=False` a clean conditioning image;
* image, use="vae+vit"-> a clean `LatentSegment` then a `VitSegment` of the same image (editing inputs,
                         as the reference inferencer feeds them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = "unimedvl-sample/1"

MODALITIES = ("chest_xray", "ct", "mri", "ultrasound", "histopathology", "fundus", "oct", "endoscopy", "other")
TASKS = (
    "vqa", "caption", "report",  # understanding
    "text_to_image",  # generation
    "segmentation", "super_resolution", "counterfactual", "virtual_staining", "cross_modal",  # interleaved
)
TASK_FAMILY = {"vqa": "understanding", "caption": "understanding", "report": "understanding",
               "text_to_image": "generation", "segmentation": "interleaved", "super_resolution": "interleaved",
               "counterfactual": "interleaved", "virtual_staining": "interleaved", "cross_modal": "interleaved"}


@dataclass(frozen=True)
class ImageRef:
    """An encoded image, kept exactly as read (never re-compressed lossily)."""

    data: bytes
    format: str  # "png" | "jpeg" | ...
    width: int
    height: int
    sha256: str

    @classmethod
    def from_bytes(cls, data: bytes, fmt: str, width: int, height: int) -> "ImageRef":
        return cls(data=data, format=fmt.lower(), width=width, height=height, sha256=hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class Item:
    kind: Literal["text", "image"]
    role: Literal["system", "user", "assistant"]
    loss: bool = False
    text: str | None = None
    image: ImageRef | None = None
    use: Literal["vit", "vae", "vae+vit"] | None = None

    def __post_init__(self) -> None:
        if self.kind == "text" and (self.text is None or self.image is not None):
            raise ValueError("a text item needs text and no image")
        if self.kind == "image" and (self.image is None or self.use is None):
            raise ValueError("an image item needs an image and a use")
        if self.kind == "image" and self.loss and self.use != "vae":
            raise ValueError("only VAE images can carry a (generation) loss")


@dataclass
class Sample:
    id: str
    task: str
    modality: str
    source: str
    licence: str
    items: list[Item]
    group: str  # patient / study id used for leakage-free splits
    split: str = ""  # train | val | test, assigned by the build
    template_made: bool = False  # text generated from labels by a template
    provenance: dict[str, Any] = field(default_factory=dict)
    qc: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}")

    @property
    def family(self) -> str:
        return TASK_FAMILY[self.task]

    def images(self) -> list[ImageRef]:
        return [it.image for it in self.items if it.image is not None]

    def texts(self) -> list[str]:
        return [it.text for it in self.items if it.text is not None]

    # ---------------------------------------------------------------- rows
    def to_row(self) -> dict[str, Any]:
        """A flat Arrow/Parquet row: items as a list of structs, image bytes kept as encoded."""
        return {
            "id": self.id, "schema": SCHEMA_VERSION, "task": self.task, "family": self.family,
            "modality": self.modality, "source": self.source, "licence": self.licence, "group": self.group,
            "split": self.split, "template_made": self.template_made,
            "items": [{"kind": it.kind, "role": it.role, "loss": it.loss, "text": it.text, "use": it.use,
                       "image": None if it.image is None else it.image.data,
                       "image_format": None if it.image is None else it.image.format,
                       "image_width": None if it.image is None else it.image.width,
                       "image_height": None if it.image is None else it.image.height,
                       "image_sha256": None if it.image is None else it.image.sha256} for it in self.items],
            "provenance": json.dumps(self.provenance, sort_keys=True),
            "qc": json.dumps(self.qc, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Sample":
        if row.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"sample {row.get('id')} has schema {row.get('schema')!r}, expected {SCHEMA_VERSION}")
        items = []
        for it in row["items"]:
            image = None
            if it["image"] is not None:
                image = ImageRef(data=it["image"], format=it["image_format"], width=it["image_width"],
                                 height=it["image_height"], sha256=it["image_sha256"])
            items.append(Item(kind=it["kind"], role=it["role"], loss=it["loss"], text=it["text"], image=image,
                              use=it["use"]))
        return cls(id=row["id"], task=row["task"], modality=row["modality"], source=row["source"],
                   licence=row["licence"], items=items, group=row["group"], split=row["split"],
                   template_made=row["template_made"], provenance=json.loads(row["provenance"]),
                   qc=json.loads(row["qc"]))


def arrow_schema():  # noqa: ANN201
    import pyarrow as pa

    item = pa.struct([
        ("kind", pa.string()), ("role", pa.string()), ("loss", pa.bool_()), ("text", pa.string()),
        ("use", pa.string()), ("image", pa.binary()), ("image_format", pa.string()),
        ("image_width", pa.int32()), ("image_height", pa.int32()), ("image_sha256", pa.string()),
    ])
    return pa.schema([
        ("id", pa.string()), ("schema", pa.string()), ("task", pa.string()), ("family", pa.string()),
        ("modality", pa.string()), ("source", pa.string()), ("licence", pa.string()), ("group", pa.string()),
        ("split", pa.string()), ("template_made", pa.bool_()), ("items", pa.list_(item)),
        ("provenance", pa.string()), ("qc", pa.string()),
    ])


def sample_id(*parts: object) -> str:
    """Stable id from the parts that define a sample (source, record key, task, variant)."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]
