"""Strict loading of released UniMedVL / BAGEL checkpoint folders (safetensors only).

The model is built on the meta device (no memory), then every parameter is filled from the
memory-mapped safetensors file, one tensor at a time, already in the target dtype and device, so
peak host memory stays near one copy of the weights.

Loading is strict by default: missing, unexpected and mis-shaped keys are collected into one
:class:`LoadReport` and raised together. Known extras (`vae_model.*`, `vae_batch_norm.*`, which a
UniMedVL training run may save into `ema.safetensors`) are accepted with a warning. The sin-cos
tables are deterministic; if a checkpoint lacks them they are recomputed (with a warning).
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from unimedvl.errors import CheckpointError

log = logging.getLogger(__name__)

KNOWN_EXTRA_PREFIXES = {
    "vae_model.": "VAE weights saved inside the model; the VAE is read from ae.safetensors",
    "vae_batch_norm.": "latent BatchNorm of UniMedVL's e2e-VAE training, unused at inference",
}
DERIVABLE_KEYS = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class LoadReport:
    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored_extras: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 8) -> str:
        def listing(keys: list[str]) -> str:
            more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{self.source}: {self.loaded} tensors loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {listing(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} (model {list(a)}, file {list(b)})" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} mis-shaped: {listing(shown)}")
        if self.ignored_extras:
            parts.append(f"{len(self.ignored_extras)} known extras ignored: {listing(self.ignored_extras)}")
        if self.recomputed:
            parts.append(f"recomputed: {', '.join(self.recomputed)}")
        return "; ".join(parts)


def weight_files(folder: Path, stem: str) -> list[Path]:
    """Safetensors files for `stem` ('ema' or 'model'): single file, its _bf16 twin, or a sharded index."""
    for name in (f"{stem}.safetensors", f"{stem}_bf16.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index.name} is malformed: {exc}") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index.name} names shards that are missing: {', '.join(absent)}")
        return files
    pickles = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); they are not loaded because unpickling "
            "can run arbitrary code. Convert them to safetensors first."
        )
    raise CheckpointError(f"no {stem}.safetensors in {folder}")


def _open_all(stack: ExitStack, files: list[Path]) -> dict[str, object]:
    """Map every key to an open safetensors handle (memory-mapped)."""
    handles: dict[str, object] = {}
    for path in files:
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path.name}: only .safetensors weights are loaded")
        try:
            handle = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc})") from None
        for key in handle.keys():
            handles[key] = handle
    return handles


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, attr)
    if isinstance(old, nn.Parameter):
        setattr(parent, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        parent.register_buffer(attr, value)


def load_safetensors_into(module: nn.Module, files: list[Path], *, dtype: torch.dtype, device: torch.device,
                          strict: bool = True, source: str | None = None,
                          derivable: tuple[str, ...] = (), known_extras: dict[str, str] | None = None,
                          key_prefix: str = "") -> LoadReport:
    """Fill a (meta) module from safetensors files, strictly by default. Returns the report.

    `key_prefix` is a wrapper prefix carried by every file key (e.g. 'module.'), removed before matching.
    """
    known_extras = known_extras or {}
    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    report = LoadReport(source=source or ", ".join(f.name for f in files))
    with ExitStack() as stack:
        opened = _open_all(stack, files)
        handles = {k[len(key_prefix):]: h for k, h in opened.items()}
        for key in sorted(handles):
            if key in expected:
                continue
            if any(key.startswith(prefix) for prefix in known_extras):
                report.ignored_extras.append(key)
            else:
                report.unexpected.append(key)
        to_load = []
        for key, shape in expected.items():
            if key not in handles:
                if key not in derivable:
                    report.missing.append(key)
                continue
            file_shape = tuple(handles[key].get_slice(key_prefix + key).get_shape())
            if file_shape != shape:
                report.mismatched.append((key, shape, file_shape))
            else:
                to_load.append(key)
        if strict and not report.ok:
            raise CheckpointError(f"checkpoint does not match the model: {report.format()}")
        for key in to_load:
            tensor = handles[key].get_tensor(key_prefix + key)
            if tensor.is_floating_point():
                tensor = tensor.to(device=device, dtype=dtype)
            _set_tensor(module, key, tensor.to(device))
            report.loaded += 1
    for key in expected:
        if key in to_load:
            continue
        # Derivable tables, and (non-strict only) missing or mis-shaped tensors: materialise them.
        _set_tensor(module, key, torch.zeros(expected[key], dtype=dtype, device=device))
        if key in derivable:
            report.recomputed.append(key)
            owner = module.get_submodule(key.rpartition(".")[0])
            owner.reset_table()  # type: ignore[operator]
    if report.ignored_extras:
        log.warning("ignored %d known extra keys (%s)", len(report.ignored_extras),
                    "; ".join(sorted({known_extras[p] for p in known_extras
                                      for k in report.ignored_extras if k.startswith(p)})))
    if report.recomputed:
        log.warning("checkpoint lacks %s; recomputed the sin-cos tables", ", ".join(report.recomputed))
    if not report.ok:
        log.warning("non-strict load: %s", report.format())
    return report


def strip_wrapper_prefix(files: list[Path]) -> str:
    """Return 'module.' if every key of the files carries that DDP wrapper prefix (UniMedVL's load_ae strips it)."""
    with ExitStack() as stack:
        keys = list(_open_all(stack, files))
    return "module." if keys and all(k.startswith("module.") for k in keys) else ""
