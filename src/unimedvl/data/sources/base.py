"""Records, source configs (one YAML per source) and the adapter registry."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

from unimedvl.data.schema import MODALITIES, ImageRef
from unimedvl.errors import ConfigError, UnimedvlError


class RecordError(UnimedvlError):
    """One input file or entry could not be read; the build reports it and goes on."""


@dataclass
class RawRecord:
    """One item of a source dataset, before task building."""

    source: str
    key: str  # unique and stable within the source; never a patient identifier
    modality: str
    licence: str
    group: str  # patient / study id (pseudonymised where it came from identifiers)
    images: list[ImageRef] = field(default_factory=list)
    label: str | None = None  # human-readable class label / finding
    question: str | None = None
    answer: str | None = None
    answer_type: str | None = None
    report: str | None = None
    caption: str | None = None
    target: ImageRef | None = None  # the B image of an A -> B pair
    target_modality: str | None = None
    mask: ImageRef | None = None
    mask_label: str | None = None
    official_split: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceConfig:
    """A source, as declared in its YAML file."""

    name: str
    adapter: str
    path: Path
    modality: str | None
    licence: str
    tasks: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    repeat: int = 1  # repeat every record (benchmarks)
    limit: int | None = None  # use only the first N references
    redistributable: bool = False
    base_dir: Path = Path(".")  # the folder of the declaring YAML: relative option paths start here

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path, origin: str) -> "SourceConfig":
        known = {"name", "adapter", "path", "modality", "licence", "tasks", "options", "repeat", "redistributable",
                 "description", "citation", "limit"}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(f"{origin}: unknown key(s) {', '.join(unknown)}")
        for required in ("name", "adapter", "path", "licence"):
            if required not in data:
                raise ConfigError(f"{origin}: missing required key {required!r}")
        _check_source_types(data, origin)
        _load_adapters()
        if data["adapter"] not in ADAPTERS:
            raise ConfigError(f"{origin}: unknown adapter {data['adapter']!r}; choose one of {sorted(ADAPTERS)}")
        modality = data.get("modality")
        if modality is not None and modality not in MODALITIES:
            raise ConfigError(f"{origin}: unknown modality {modality!r}; choose one of {list(MODALITIES)}")
        path = (base_dir / data["path"]).resolve()  # a missing path is reported by the build, per source
        return cls(name=str(data["name"]), adapter=data["adapter"], path=path, modality=modality,
                   licence=str(data["licence"]), tasks=tuple(data.get("tasks", ())),
                   options=dict(data.get("options") or {}), repeat=int(data.get("repeat", 1)),
                   limit=None if data.get("limit") is None else int(data["limit"]),
                   redistributable=bool(data.get("redistributable", False)), base_dir=base_dir.resolve())

    @classmethod
    def from_yaml(cls, path: Path) -> "SourceConfig":
        from unimedvl.utils.files import read_yaml_mapping

        data = read_yaml_mapping(path, "source file")
        config = cls.from_dict(data, path.parent, path.name)
        from unimedvl.data.schema import TASKS

        bad = [t for t in config.tasks if t not in TASKS]
        if bad:
            raise ConfigError(f"{path.name}: unknown task(s) {bad}; choose from {list(TASKS)}")
        return config


def _check_source_types(data: dict[str, Any], origin: str) -> None:
    """Each key of a source entry has its type, so a wrong one is named here rather than failing deep in a build."""
    def fail(key: str, want: str) -> None:
        raise ConfigError(f"{origin}: {key} must be {want}, got {data[key]!r}")

    for key in ("name", "adapter", "path", "licence"):
        if not isinstance(data[key], str) or not data[key].strip():
            fail(key, "a non-empty string")
    if data.get("modality") is not None and not isinstance(data["modality"], str):
        fail("modality", "a modality name")
    tasks = data.get("tasks", ())
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        fail("tasks", "a list of task names")
    if data.get("options") is not None and not isinstance(data["options"], dict):
        fail("options", "a mapping")
    for key, low in (("repeat", 1), ("limit", 1)):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            fail(key, f"an integer >= {low}")
    if "redistributable" in data and not isinstance(data["redistributable"], bool):
        fail("redistributable", "true or false")


class Adapter:
    """Base class: `refs()` lists references (cheap, picklable); `load(ref)` reads one record."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config

    def refs(self) -> list[Any]:
        raise NotImplementedError

    def load(self, ref: Any) -> RawRecord | list[RawRecord | RecordError]:
        """One record, or a list in which a RecordError stands for a part that could not be read."""
        raise NotImplementedError

    def record(self, key: str, **fields: Any) -> RawRecord:
        modality = fields.pop("modality", None) or self.config.modality
        if modality is None:
            raise RecordError(f"{self.config.name}/{key}: no modality (set `modality` in the source YAML)")
        if fields.get("label") is None and self.config.options.get("label"):
            fields["label"] = str(self.config.options["label"])  # one label for the whole source
        return RawRecord(source=self.config.name, key=key, modality=modality, licence=self.config.licence,
                         group=fields.pop("group", None) or key, **fields)


ADAPTERS: dict[str, Callable[[SourceConfig], Adapter]] = {}


def register(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    def deco(cls: type[Adapter]) -> type[Adapter]:
        ADAPTERS[name] = cls
        return cls

    return deco


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def read_image_file(path: Path) -> ImageRef:
    """Keep the file's bytes as they are; read only the header for size and format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordError(f"{path.name}: cannot read file ({exc.strerror})") from None
    return image_ref_from_bytes(data, path.name)


def image_ref_from_bytes(data: bytes, name: str) -> ImageRef:
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = (img.format or "").lower(), img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise RecordError(f"{name}: not a readable image ({exc})") from None
    if fmt == "jpg":
        fmt = "jpeg"
    return ImageRef.from_bytes(data, fmt, w, h)


def pil_to_uint8(image: Image.Image) -> Image.Image:
    """8-bit L or RGB view of any PIL image; 16-bit / float greys by the reader's display rule (`imaging/intensity.py`)."""
    import numpy as np

    from unimedvl.imaging.intensity import grey_to_uint8

    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(grey_to_uint8(np.asarray(image, dtype=np.float32), None))
    return image.convert("RGB")


def encode_png(array) -> ImageRef:  # noqa: ANN001
    """Encode a uint8 (H, W) or (H, W, 3) array losslessly as PNG."""
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return ImageRef.from_bytes(buffer.getvalue(), "png", image.width, image.height)


def list_images(folder: Path) -> Iterable[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load_adapters() -> None:
    # The adapter modules register themselves on import.
    import unimedvl.data.sources.folders  # noqa: F401
    import unimedvl.data.sources.tables  # noqa: F401
    import unimedvl.data.sources.volumes  # noqa: F401


def build_adapter(config: SourceConfig) -> Adapter:
    _load_adapters()
    return ADAPTERS[config.adapter](config)
