"""unimedvl: unified medical multimodal AI - understanding and generation with one model.

The public entry point is :class:`UniMedVL` (load once, then `ask`, `generate`, `edit`, `interleave`);
the configs and errors live here too. Everything else belongs to a subpackage (see
docs/architecture.md). Names are imported lazily, so `unimedvl.data` (the corpus pipeline) does
not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Answer": "unimedvl.inference.engine", "TextOptions": "unimedvl.inference.engine",
    "UniMedVL": "unimedvl.inference.engine", "GuidanceOptions": "unimedvl.model.sampling",
    "load_checkpoint": "unimedvl.checkpoint.folder",
    "ImageConfig": "unimedvl.config", "LLMConfig": "unimedvl.config", "ResizeBounds": "unimedvl.config",
    "UnifiedConfig": "unimedvl.config", "VAEConfig": "unimedvl.config", "ViTConfig": "unimedvl.config",
    "CheckpointError": "unimedvl.errors", "ConfigError": "unimedvl.errors", "InputError": "unimedvl.errors",
    "UnimedvlError": "unimedvl.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unimedvl' has no attribute {name!r}")
