"""unimedvl: unified medical multimodal AI - understanding and generation with one model.

The public entry point is :class:`UniMedVL` (load once, then `ask`, `generate`, `edit`, `interleave`).
"""

from unimedvl.config import LLMConfig, UnifiedConfig, VAEConfig, ViTConfig
from unimedvl.engine import Answer, TextOptions, UniMedVL
from unimedvl.errors import CheckpointError, ConfigError, InputError, UnimedvlError
from unimedvl.sampling import GuidanceOptions

__all__ = [
    "Answer", "CheckpointError", "ConfigError", "GuidanceOptions", "InputError", "LLMConfig", "TextOptions",
    "UniMedVL", "UnifiedConfig", "UnimedvlError", "VAEConfig", "ViTConfig",
]
__version__ = "0.1.0"
