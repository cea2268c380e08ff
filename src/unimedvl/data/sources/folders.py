"""Folder layouts: one class per folder, A -> B paired folders, image + mask folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unimedvl.data.sources.base import Adapter, RawRecord, RecordError, list_images, read_image_file, register


def _label_name(folder: str, options: dict[str, Any]) -> str:
    names = options.get("label_names", {})
    return str(names.get(folder, folder.replace("_", " ").replace("-", " ")))


@register("class_folder")
class ClassFolder(Adapter):
    """`root/<class>/<image>`; options: label_names {folder: text}, modality_by_class {folder: modality},
    group_pattern (regex with one group taking the patient id from the file name), exclude_patients_of
    (a text file of image file names, one per line, relative to the source YAML: every image of their
    patients is left out, e.g. the images of an evaluation set)."""

    def refs(self) -> list[str]:
        root = self.config.path
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise RecordError(f"{root}: no class folders")
        refs = [str(p.relative_to(root)) for c in classes for p in list_images(root / c)]
        excluded = self._excluded_groups()
        return [r for r in refs if self._group(Path(r).name) not in excluded] if excluded else refs

    def _group(self, name: str) -> str:
        import re

        pattern = self.config.options.get("group_pattern")
        match = re.search(pattern, name) if pattern else None
        return match.group(1) if match else name

    def _excluded_groups(self) -> set[str]:
        listed = self.config.options.get("exclude_patients_of")
        if not listed:
            return set()
        path = Path(listed) if Path(listed).is_absolute() else self.config.base_dir / listed
        if not path.is_file():
            raise RecordError(f"exclude_patients_of: {path} not found")
        return {self._group(line.strip()) for line in path.read_text().splitlines() if line.strip()}

    def load(self, ref: str) -> RawRecord:
        folder = Path(ref).parts[0]
        opts = self.config.options
        group = self._group(Path(ref).name) if "group_pattern" in opts else None
        return self.record(ref, images=[read_image_file(self.config.path / ref)], label=_label_name(folder, opts),
                           modality=opts.get("modality_by_class", {}).get(folder), group=group,
                           provenance={"path": ref})


def _refs_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise RecordError(f"{folder}: folder not found")
    return [str(p.relative_to(folder)) for p in list_images(folder)]


def _partner(ref: str, folder: Path, what: str) -> Path:
    """The file in `folder` with the same relative name as `ref`, any image suffix."""
    stem = Path(ref).with_suffix("")
    candidates = sorted(folder.glob(f"{stem}.*")) if (folder / stem.parent).is_dir() else []
    if not candidates:
        raise RecordError(f"{ref}: no {what} in {folder.name}/")
    return candidates[0]


@register("paired")
class PairedFolders(Adapter):
    """`root/<a_dir>/<name>` paired with `root/<b_dir>/<name>` (same relative name, any image suffix).

    options: a_dir, b_dir, task (virtual_staining | cross_modal | super_resolution | counterfactual),
    a_name / b_name (e.g. "H&E" / "HER2 IHC"), target_modality, finding (for counterfactual).
    """

    def refs(self) -> list[str]:
        return _refs_in(self.config.path / self.config.options.get("a_dir", "A"))

    def load(self, ref: str) -> RawRecord:
        opts = self.config.options
        target = _partner(ref, self.config.path / opts.get("b_dir", "B"), "paired image")
        a_image = read_image_file(self.config.path / opts.get("a_dir", "A") / ref)
        return self.record(ref, images=[a_image], target=read_image_file(target),
                           target_modality=opts.get("target_modality"), label=opts.get("finding"),
                           provenance={"path": ref, "pair": opts.get("task", "virtual_staining")})


@register("segmentation")
class ImageMaskFolders(Adapter):
    """`root/<images_dir>/<name>` with a binary mask `root/<masks_dir>/<name>`; options: structure (what is segmented)."""

    def refs(self) -> list[str]:
        return _refs_in(self.config.path / self.config.options.get("images_dir", "images"))

    def load(self, ref: str) -> RawRecord:
        opts = self.config.options
        mask = _partner(ref, self.config.path / opts.get("masks_dir", "masks"), "mask")
        return self.record(ref, images=[read_image_file(self.config.path / opts.get("images_dir", "images") / ref)],
                           mask=read_image_file(mask), mask_label=opts.get("structure", "lesion"),
                           provenance={"path": ref})
