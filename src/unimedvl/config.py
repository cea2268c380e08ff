"""Typed, frozen model configs and the rules that read them from a released checkpoint.

The released UniMedVL / BAGEL folders carry `llm_config.json` (Qwen2.5 `config.json` keys) and
`vit_config.json` (SigLIP keys). The reference loaders then override a few values in code; those
overrides are explicit defaults here (the reference loaders of BAGEL / UniMedVL):

* LLM: Mixture-of-Transformers layers, QK-norm on, untied embeddings.
* ViT: learned absolute positions, and **one layer fewer than the JSON says** (penultimate features).
* VAE: FLUX autoencoder hyperparameters, hard-coded in the reference; a fixture may carry its own
  `vae_config.json`.
* Unified: 70 ViT patches per side, 64 latent tokens per side, 2x2 latent patches.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unimedvl.errors import ConfigError

# Keys that Hugging Face writes into config files and that do not change the computation we do.
_HF_BOOKKEEPING = frozenset(
    {
        "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
        "use_cache", "initializer_range", "attention_dropout", "bos_token_id", "eos_token_id",
        "pad_token_id", "_attn_implementation", "_attn_implementation_autoset", "output_attentions",
        "output_hidden_states", "return_dict", "is_causal", "freeze_und", "layer_module", "qk_norm",
        "use_sliding_window", "sliding_window", "max_window_layers", "attention_bias", "rope",
        "num_channels", "tie_word_embeddings",
    }
)


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be positive, got {value!r}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name} must hold a JSON object")
    return data


def _pick(data: dict[str, Any], mapping: dict[str, str], source: str) -> dict[str, Any]:
    """Map JSON keys to dataclass fields; any key neither used nor known bookkeeping is an error."""
    unknown = sorted(k for k in data if k not in mapping and k not in _HF_BOOKKEEPING)
    if unknown:
        raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}")
    return {mapping[k]: v for k, v in data.items() if k in mapping}


@dataclass(frozen=True)
class LLMConfig:
    """Qwen2 decoder with Mixture-of-Transformers layers (understanding + generation experts)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    hidden_act: Literal["silu"] = "silu"
    layer_kind: Literal["mot"] = "mot"  # forced by the reference loaders ("Qwen2MoTDecoderLayer")
    qk_norm: bool = True  # forced by the reference loaders
    tie_word_embeddings: bool = False  # forced by the reference loaders

    def __post_init__(self) -> None:
        _check_positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("LLMConfig.hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("LLMConfig.num_attention_heads must be divisible by num_key_value_heads")
        if self.hidden_act != "silu":
            raise ConfigError(f"LLMConfig.hidden_act must be 'silu', got {self.hidden_act!r}")
        if self.layer_kind != "mot" or not self.qk_norm or self.tie_word_embeddings:
            raise ConfigError("only MoT layers with qk_norm=True and untied embeddings are supported")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    _JSON_KEYS = {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
        "num_hidden_layers": "num_hidden_layers", "num_attention_heads": "num_attention_heads",
        "num_key_value_heads": "num_key_value_heads", "rope_theta": "rope_theta",
        "rms_norm_eps": "rms_norm_eps", "max_position_embeddings": "max_position_embeddings",
        "hidden_act": "hidden_act", "rope_scaling": "_rope_scaling",
    }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str = "llm_config.json") -> "LLMConfig":
        values = _pick(data, cls._JSON_KEYS, source)
        if values.pop("_rope_scaling", None) is not None:
            raise ConfigError(f"{source}: rope_scaling is not supported by the reference model")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            **{k: getattr(self, k) for k in self._JSON_KEYS if k != "rope_scaling"},
            "tie_word_embeddings": False,
        }


@dataclass(frozen=True)
class ViTConfig:
    """SigLIP NaViT vision tower. `num_hidden_layers` counts the layers **used** (JSON value - 1)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_attention_heads: int = 16
    num_hidden_layers: int = 26
    patch_size: int = 14
    image_size: int = 980
    layer_norm_eps: float = 1e-6
    hidden_act: Literal["gelu_pytorch_tanh"] = "gelu_pytorch_tanh"
    num_channels: int = 3

    def __post_init__(self) -> None:
        _check_positive(self, "hidden_size", "intermediate_size", "num_attention_heads",
                        "num_hidden_layers", "patch_size", "image_size", "layer_norm_eps")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("ViTConfig.hidden_size must be divisible by num_attention_heads")
        if self.hidden_act != "gelu_pytorch_tanh":
            raise ConfigError(f"ViTConfig.hidden_act must be 'gelu_pytorch_tanh', got {self.hidden_act!r}")

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.patch_size**2

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    _JSON_KEYS = {
        "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
        "num_attention_heads": "num_attention_heads", "num_hidden_layers": "num_hidden_layers",
        "patch_size": "patch_size", "image_size": "image_size", "layer_norm_eps": "layer_norm_eps",
        "hidden_act": "hidden_act",
    }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str = "vit_config.json") -> "ViTConfig":
        values = _pick(data, cls._JSON_KEYS, source)
        if "num_hidden_layers" in values:
            # Reference loader rule: drop the last layer, i.e. use penultimate-layer features.
            values["num_hidden_layers"] = int(values["num_hidden_layers"]) - 1
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_json_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._JSON_KEYS}
        out["num_hidden_layers"] = self.num_hidden_layers + 1
        out["model_type"] = "siglip_vision_model"
        return out


@dataclass(frozen=True)
class VAEConfig:
    """FLUX autoencoder. Defaults are the values hard-coded in the reference `load_ae`."""

    resolution: int = 256
    in_channels: int = 3
    downsample: int = 8
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        _check_positive(self, "ch", "num_res_blocks", "z_channels", "downsample")
        if 2 ** (len(self.ch_mult) - 1) != self.downsample:
            raise ConfigError(
                f"VAEConfig.downsample={self.downsample} does not match ch_mult of length {len(self.ch_mult)}"
            )
        if any(self.ch * m % 32 for m in self.ch_mult):
            raise ConfigError("VAEConfig: every ch*ch_mult must be divisible by 32 (GroupNorm groups)")

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str = "vae_config.json") -> "VAEConfig":
        params = data.get("params", data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in params if k not in names)
        if unknown:
            raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}")
        return cls(**params)

    def to_json_dict(self) -> dict[str, Any]:
        return {"params": {**dataclasses.asdict(self), "ch_mult": list(self.ch_mult)}}


@dataclass(frozen=True)
class UnifiedConfig:
    """The whole model: LLM + ViT + VAE and the heads that join them (the reference `BagelConfig`)."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    vit_max_num_patch_per_side: int = 70
    max_latent_size: int = 64
    latent_patch_size: int = 2
    connector_act: Literal["gelu_pytorch_tanh"] = "gelu_pytorch_tanh"
    timestep_embed_dim: int = 256

    def __post_init__(self) -> None:
        _check_positive(self, "vit_max_num_patch_per_side", "max_latent_size", "latent_patch_size")

    @property
    def latent_downsample(self) -> int:
        """Pixels per generation token along one side (8 * 2 = 16)."""
        return self.vae.downsample * self.latent_patch_size

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.vae.z_channels

    @classmethod
    def full(cls) -> "UnifiedConfig":
        """The released 14B model: Qwen2.5-7B-Instruct (x2 experts) + SigLIP-so400m + FLUX VAE."""
        return cls()

    @classmethod
    def tiny(cls) -> "UnifiedConfig":
        """The size of `tests/fixtures/reference-tiny`: runs in milliseconds on a CPU."""
        return cls(
            llm=LLMConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2),
            vit=ViTConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2),
            vae=VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
        )

    @classmethod
    def preset(cls, name: str) -> "UnifiedConfig":
        presets = {"full": cls.full, "tiny": cls.tiny}
        if name not in presets:
            raise ConfigError(f"unknown config preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    @classmethod
    def from_checkpoint_dir(cls, folder: str | Path) -> "UnifiedConfig":
        """Read `llm_config.json`, `vit_config.json` (and `vae_config.json` if present) from a folder."""
        folder = Path(folder)
        llm = LLMConfig.from_json_dict(_read_json(folder / "llm_config.json"))
        vit = ViTConfig.from_json_dict(_read_json(folder / "vit_config.json"))
        vae_path = folder / "vae_config.json"
        vae = VAEConfig.from_json_dict(_read_json(vae_path)) if vae_path.is_file() else VAEConfig()
        return cls(llm=llm, vit=vit, vae=vae)

    def save_to_dir(self, folder: str | Path) -> None:
        """Write the three JSON files in the released layout (plus vae_config.json)."""
        from unimedvl.io_utils import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("llm_config.json", self.llm.to_json_dict()),
                           ("vit_config.json", self.vit.to_json_dict()),
                           ("vae_config.json", self.vae.to_json_dict())):
            atomic_write_text(folder / name, json.dumps(data, indent=2) + "\n")
