"""unimedvl: unified medical multimodal AI - understanding and generation with one model.

The public entry point is :class:`UniMedVL` (load once, then `ask`, `generate`, `edit`, `interleave`).
Names are imported lazily, so `unimedvl.data` (the corpus pipeline) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Answer": "unimedvl.engine", "TextOptions": "unimedvl.engine", "UniMedVL": "unimedvl.engine",
    "GuidanceOptions": "unimedvl.sampling",
    "LLMConfig": "unimedvl.config", "UnifiedConfig": "unimedvl.config", "VAEConfig": "unimedvl.config",
    "ViTConfig": "unimedvl.config",
    "CheckpointError": "unimedvl.errors", "ConfigError": "unimedvl.errors", "InputError": "unimedvl.errors",
    "UnimedvlError": "unimedvl.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unimedvl' has no attribute {name!r}")
