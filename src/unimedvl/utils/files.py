"""Small file helpers: every write is atomic (write to a temporary file, then rename); readers give clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _read_object(path: str | Path, what: str, parse: Callable[[str], Any], errors: tuple[type[Exception], ...],
                 language: str, kind: str) -> dict:
    from unimedvl.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (*errors, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid {language}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must hold {kind}")
    return data


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping (an empty file is an empty one); clear errors otherwise."""
    import yaml

    def parse(text: str) -> Any:
        data = yaml.safe_load(text)
        return {} if data is None else data

    return _read_object(path, what, parse, (yaml.YAMLError,), "YAML", "a mapping")


def read_json_object(path: str | Path, what: str) -> dict:
    """A JSON file that must hold an object; clear errors for a missing file, bad JSON or another type."""
    import json

    return _read_object(path, what, json.loads, (json.JSONDecodeError,), "JSON", "a JSON object")
