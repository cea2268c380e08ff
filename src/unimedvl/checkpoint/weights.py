"""Strict loading of safetensors weights into a module, through one declarative key map.

The module is usually built on the meta device (no memory); every tensor is then filled from the
memory-mapped safetensors files, one at a time, already in the target dtype and device, so peak
host memory stays near one copy of the weights.

How a file's keys land in the module is a :class:`KeyMap` (see `keymaps.py`): renames, tensors
copied to a second key (the MoT generation expert), shape transforms, keys deliberately left out,
keys the module may keep or recompute. Anything else is an error: missing, unexpected and
mis-shaped keys are collected into one :class:`LoadReport` and raised together (strict by default).
Only `.safetensors` files are read; pickle formats are refused.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from unimedvl.errors import CheckpointError
from unimedvl.model.layers import Int8Linear

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WRAPPER_PREFIX = "module."  # DDP's prefix (UniMedVL's load_ae strips it)
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})  # safetensors dtype names a float weight may have


@dataclass(frozen=True)
class KeyMap:
    """How the keys of a weights file map onto a module's state-dict keys.

    Attributes:
        name: what the file is, for the report ("ema.safetensors", "Qwen2 (Hugging Face)").
        renames: (file prefix, module prefix) pairs, the first match wins; a key matching none is
            used as it is.
        scope: module keys this file must fill (a prefix; "" = all of them). Keys outside it
            keep whatever they hold.
        copies: (regex, replacement) on module keys: the tensor is also copied to the key the
            replacement gives (the generation expert starts as the understanding expert).
        transforms: (regex on module keys, function) applied to a tensor before its shape is checked.
        ignored: file-key prefixes known to be unused, with the reason (accepted, reported).
        dropped_if_absent: regexes of file keys that are dropped when the module has no such key
            (SigLIP layers past the penultimate one).
        derivable: module keys that are recomputed (`owner.reset_table()`) when the file lacks them.
        keep_if_absent: regexes of module keys that keep their current (initialised) value when the
            file lacks them (Qwen2.5 has no QK-norm weights; BAGEL starts them at one).
        strip_wrapper: remove a `module.` prefix carried by every key of the files.
        skipped: regexes of module keys that are neither read nor required and stay unallocated on
            the meta device (an understanding-only load leaves out the generation expert).
    """

    name: str
    renames: tuple[tuple[str, str], ...] = ()
    scope: str = ""
    copies: tuple[tuple[str, str], ...] = ()
    transforms: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    dropped_if_absent: tuple[str, ...] = ()
    derivable: tuple[str, ...] = ()
    keep_if_absent: tuple[str, ...] = ()
    strip_wrapper: bool = False
    skipped: tuple[str, ...] = ()  # regexes of module keys neither read nor required (left unallocated)

    def module_key(self, file_key: str) -> str:
        for old, new in self.renames:
            if file_key.startswith(old):
                return new + file_key[len(old):]
        return file_key

    def copies_of(self, module_key: str) -> list[str]:
        return [re.sub(pattern, repl, module_key) for pattern, repl in self.copies if re.search(pattern, module_key)]

    def transform(self, module_key: str, tensor: torch.Tensor) -> torch.Tensor:
        for pattern, fn in self.transforms:
            if re.search(pattern, module_key):
                tensor = fn(tensor)
        return tensor


@dataclass
class LoadReport:
    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored_extras: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)  # tensors holding NaN or infinity
    wrong_dtype: list[tuple[str, str]] = field(default_factory=list)  # integer or bool data for a float weight
    skipped: int = 0  # tensors of the file left out on purpose (KeyMap.skipped)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.non_finite or self.wrong_dtype)

    def format(self, limit: int = 8) -> str:
        def listing(keys: list[str]) -> str:
            more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{self.source}: {self.loaded} tensors loaded"]
        if self.skipped:
            parts.append(f"{self.skipped} left out by the load mode")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {listing(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} (model {list(a)}, file {list(b)})" for k, a, b in self.mismatched]
            parts.append(f"{len(self.mismatched)} mis-shaped: {listing(shown)}")
        if self.wrong_dtype:
            shown = [f"{k} ({dtype})" for k, dtype in self.wrong_dtype]
            parts.append(f"{len(self.wrong_dtype)} not floating point: {listing(shown)}")
        if self.ignored_extras:
            parts.append(f"{len(self.ignored_extras)} known extras ignored: {listing(self.ignored_extras)}")
        if self.dropped:
            parts.append(f"{len(self.dropped)} unused by this model: {listing(self.dropped)}")
        if self.kept:
            parts.append(f"{len(self.kept)} kept as initialised: {listing(self.kept)}")
        if self.recomputed:
            parts.append(f"recomputed: {', '.join(self.recomputed)}")
        if self.non_finite:
            parts.append(f"{len(self.non_finite)} holding NaN or infinity: {listing(self.non_finite)}")
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
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index.name} is malformed: {type(exc).__name__}: {exc}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index.name}: weight_map must map tensor names to shard file names")
        # A shard is a file beside the index: no folders, no way out of the checkpoint.
        strays = sorted({v for v in weight_map.values() if Path(v).name != v or not v.endswith(".safetensors")})
        if strays:
            raise CheckpointError(f"{index.name} names shards that are not .safetensors files in the folder: "
                                  f"{', '.join(strays[:4])}")
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


def safetensors_files(path: Path, what: str) -> list[Path]:
    """A `.safetensors` file, or every one in a folder (a component checkpoint); pickles refused."""
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{what}: no .safetensors files in {path}")
    for f in files:
        if f.suffix != ".safetensors":
            raise CheckpointError(f"{what}: {f.name} is not a .safetensors file; only safetensors weights are loaded")
    return files


def _open_all(stack: ExitStack, files: list[Path], paths: dict[str, Path] | None = None) -> dict[str, object]:
    """Map every key to an open safetensors handle (memory-mapped); `paths` gets each key's file."""
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
            if paths is not None:
                paths[key] = path
    return handles


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, attr)
    if isinstance(old, nn.Parameter):
        setattr(parent, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        parent.register_buffer(attr, value)


def _load_int8(owner: Int8Linear, weight: torch.Tensor | Callable[[int, int], torch.Tensor], key: str,
               device: torch.device, report: LoadReport) -> None:
    if not owner.load_weight(weight, device):
        report.non_finite.append(key)
    report.loaded += 1


def _rows_through_short_mappings(path: Path, key: str) -> Callable[[int, int], torch.Tensor]:
    """`rows(start, stop)` of one stored tensor, each read through its own short-lived mapping, so the float
    pages a chunk touches leave the process with it (one long-lived mapping keeps every page it has read
    resident until it closes: 1.1 GB for the 14B model's lm_head)."""
    def rows(start: int, stop: int) -> torch.Tensor:
        with safe_open(str(path), framework="pt", device="cpu") as own:
            return own.get_slice(key)[start:stop]  # type: ignore[attr-defined]
    return rows


def _all_finite(tensor: torch.Tensor, rows: int = 4096) -> bool:
    """torch.isfinite(tensor).all() without a full-size boolean temporary (0.5 GB for a 14B embedding)."""
    if tensor.dim() == 0:
        return bool(torch.isfinite(tensor))
    return all(bool(torch.isfinite(chunk).all()) for chunk in tensor.split(rows))


def _read_converted(path: Path, key: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A stored tensor converted to `dtype`, read through a short-lived mapping (the stored pages do not stay)."""
    with safe_open(str(path), framework="pt", device="cpu") as own:
        return own.get_tensor(key).to(device=device, dtype=dtype)  # type: ignore[attr-defined]


def load_weights(module: nn.Module, files: list[Path], key_map: KeyMap, *, dtype: torch.dtype,
                 device: torch.device, strict: bool = True) -> LoadReport:
    """Fill `module` from safetensors files through `key_map`, strictly by default. Returns the report.

    Floating-point tensors arrive in `dtype` on `device`. With `strict=False` problems are logged
    instead of raised, and module keys left on the meta device are filled with zeros.
    """
    def skip(key: str) -> bool:
        return any(re.search(p, key) for p in key_map.skipped)

    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()
                if k.startswith(key_map.scope) and not skip(k)}
    expected_dtype = {k: v.dtype for k, v in module.state_dict(keep_vars=True).items() if k in expected}
    report = LoadReport(source=key_map.name)
    with ExitStack() as stack:
        file_of: dict[str, Path] = {}
        opened = _open_all(stack, files, file_of)
        prefix = WRAPPER_PREFIX if key_map.strip_wrapper and opened and all(
            k.startswith(WRAPPER_PREFIX) for k in opened) else ""
        plan: dict[str, str] = {}  # module key -> the file key it is read from
        for file_key in sorted(opened):
            key = key_map.module_key(file_key[len(prefix):])
            reason = next((why for p, why in key_map.ignored if key.startswith(p)), None)
            if skip(key):
                report.skipped += 1
            elif reason is not None:
                report.ignored_extras.append(key)
            elif key in expected:
                for target in [key, *key_map.copies_of(key)]:
                    plan[target] = file_key
            elif any(re.search(p, key) for p in key_map.dropped_if_absent):
                report.dropped.append(key)
            else:
                report.unexpected.append(key)
        for key in expected:
            if key in plan:
                continue
            if key in key_map.derivable:
                report.recomputed.append(key)
            elif any(re.search(p, key) for p in key_map.keep_if_absent):
                report.kept.append(key)
            else:
                report.missing.append(key)
        report.unexpected += sorted(k for k in plan if k not in expected)  # a copy rule pointing nowhere
        tensors: dict[str, torch.Tensor] = {}
        for key, file_key in sorted(plan.items()):
            if key not in expected:
                continue
            handle = opened[file_key]
            if key_map.transforms:
                tensor = key_map.transform(key, handle.get_tensor(file_key))  # type: ignore[attr-defined]
                shape = tuple(tensor.shape)
                tensors[key] = tensor
            else:
                shape = tuple(handle.get_slice(file_key).get_shape())  # type: ignore[attr-defined]
            if shape != expected[key]:
                report.mismatched.append((key, expected[key], shape))
            elif expected_dtype[key].is_floating_point and handle.get_slice(file_key).get_dtype() not in FLOAT_DTYPES:
                report.wrong_dtype.append((key, handle.get_slice(file_key).get_dtype()))  # type: ignore[attr-defined]
        if strict and not report.ok:
            raise CheckpointError(f"checkpoint does not match the model: {report.format()}")
        bad = {k for k, _, _ in report.mismatched} | {k for k, _ in report.wrong_dtype}
        for key in expected:
            if key not in plan or key in bad:
                continue
            file_key = plan[key]
            owner_name, _, attr = key.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if isinstance(owner, Int8Linear) and attr == "weight":
                weight = tensors[key] if key in tensors else _rows_through_short_mappings(file_of[file_key], file_key)
                _load_int8(owner, weight, key, device, report)
                continue
            # get_tensor maps lazily: nothing is read until the tensor is used
            tensor = tensors[key] if key in tensors else opened[file_key].get_tensor(file_key)  # type: ignore[attr-defined]
            if tensor.is_floating_point():
                if key not in tensors and tensor.dtype == dtype and device.type == "cpu":
                    # The tensor stays memory-mapped: check it through a short-lived mapping, so the check does
                    # not make every page of it (a 1 GB embedding table) resident for the life of the model.
                    with safe_open(str(file_of[file_key]), framework="pt", device="cpu") as own:
                        finite = _all_finite(own.get_tensor(file_key))
                else:
                    if key not in tensors:  # converted: from a short-lived mapping, so its stored pages go
                        tensor = _read_converted(file_of[file_key], file_key, device, dtype)
                    finite = _all_finite(tensor)
                if not finite:  # a NaN weight answers "!!!!" to every question
                    report.non_finite.append(key)
                tensor = tensor.to(device=device, dtype=dtype)
            _set_tensor(module, key, tensor.to(device))
            report.loaded += 1
    if strict and report.non_finite:
        raise CheckpointError(f"checkpoint holds non-finite weights: {report.format()}")
    state = module.state_dict(keep_vars=True)
    for key in report.recomputed:
        _set_tensor(module, key, torch.zeros(expected[key], dtype=dtype, device=device))
        module.get_submodule(key.rpartition(".")[0]).reset_table()  # type: ignore[operator]
    for key in expected:  # non-strict leftovers still on meta: materialise them (skipped keys are not expected)
        if state[key].is_meta and key not in report.recomputed:
            _set_tensor(module, key, torch.zeros(expected[key], dtype=dtype, device=device))
    if report.ignored_extras:
        reasons = sorted({why for p, why in key_map.ignored for k in report.ignored_extras if k.startswith(p)})
        log.warning("ignored %d known extra keys (%s)", len(report.ignored_extras), "; ".join(reasons))
    if report.recomputed:
        log.warning("checkpoint lacks %s; recomputed the sin-cos tables", ", ".join(report.recomputed))
    if not report.ok:
        log.warning("non-strict load: %s", report.format())
    return report
