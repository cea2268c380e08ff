"""Typed, frozen model configs and the rules that read them from a released checkpoint.

The released UniMedVL / BAGEL folders carry `llm_config.json` (Qwen2.5 `config.json` keys) and
`vit_config.json` (SigLIP keys). The reference loaders then override a few values in code; those
overrides are explicit defaults here (the reference loaders of BAGEL / UniMedVL):

* LLM: Mixture-of-Transformers layers, QK-norm on, untied embeddings.
* ViT: learned absolute positions, and **one layer fewer than the JSON says** (penultimate features).
* VAE: FLUX autoencoder hyperparameters, hard-coded in the reference; a fixture may carry its own
  `vae_config.json`.
* Unified: 70 ViT patches per side, 64 latent tokens per side, 2x2 latent patches.

:class:`ImageConfig` is how images were sized when a model was trained (`image_config.json`,
written by a training export): inference must size its inputs and outputs the same way. A
released checkpoint has none and gets the reference scripts' rules (:meth:`ImageConfig.reference`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unimedvl.errors import ConfigError
from unimedvl.utils.numbers import is_finite_number

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


# A config beyond these sizes is a typo, not a model (the released 14B has 28 layers, hidden 3584).
MAX_CONFIG_VALUE = {"num_hidden_layers": 256, "hidden_size": 65_536, "intermediate_size": 262_144,
                    "num_attention_heads": 1_024, "num_key_value_heads": 1_024, "vocab_size": 4_000_000,
                    "max_position_embeddings": 1_048_576}


def _check_positive(obj: Any, *names: str) -> None:
    """Positive, finite (NaN and infinity pass `> 0` tests or poison every output) and within sane sizes."""
    for name in names:
        value = getattr(obj, name)
        if not is_finite_number(value) or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive finite number, got {value!r}")
        limit = MAX_CONFIG_VALUE.get(name)
        if limit is not None and value > limit:
            raise ConfigError(f"{type(obj).__name__}.{name} = {value!r} exceeds the limit {limit:,}")


def _check_types(obj: Any) -> None:
    """Every field holds its annotated type, so a wrong type in a JSON file is named here, not deep in torch."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), f.type
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        elif kind == "float":  # finiteness and range: _check_positive or the config's own checks
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif kind == "bool":
            ok = isinstance(value, bool)
            want = "true or false"
        elif kind == "tuple[int, ...]":
            ok = isinstance(value, (list, tuple)) and bool(value) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)
            want = "a non-empty list of integers"
        elif kind.startswith("Literal["):
            ok = isinstance(value, str)
            want = "a string"
        else:
            continue
        if not ok:
            raise ConfigError(f"{type(obj).__name__}.{f.name} must be {want}, got {value!r}")


def _read_json(path: Path) -> dict[str, Any]:
    from unimedvl.utils.files import read_json_object

    return read_json_object(path, "config file")


def _pick(data: dict[str, Any], mapping: dict[str, str], source: str) -> dict[str, Any]:
    """Map JSON keys to dataclass fields; any key neither used nor known bookkeeping is an error."""
    unknown = sorted(str(k) for k in data if k not in mapping and k not in _HF_BOOKKEEPING)
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
        _check_types(self)
        _check_positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                        "max_position_embeddings")
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
        _check_types(self)
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
            layers = values["num_hidden_layers"]
            if not isinstance(layers, int) or isinstance(layers, bool):
                raise ConfigError(f"{source}: num_hidden_layers must be an integer, got {layers!r}")
            # Reference loader rule: drop the last layer, i.e. use penultimate-layer features.
            values["num_hidden_layers"] = layers - 1
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
        _check_types(self)
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        _check_positive(self, "resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "z_channels",
                        "downsample", "scale_factor")
        if not is_finite_number(self.shift_factor):
            raise ConfigError(f"VAEConfig.shift_factor must be a finite number, got {self.shift_factor!r}")
        if any(m <= 0 for m in self.ch_mult):
            raise ConfigError(f"VAEConfig.ch_mult must hold positive integers, got {list(self.ch_mult)}")
        if 2 ** (len(self.ch_mult) - 1) != self.downsample:
            raise ConfigError(
                f"VAEConfig.downsample={self.downsample} does not match ch_mult of length {len(self.ch_mult)}"
            )
        if any(self.ch * m % 32 for m in self.ch_mult):
            raise ConfigError("VAEConfig: every ch*ch_mult must be divisible by 32 (GroupNorm groups)")

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str = "vae_config.json") -> "VAEConfig":
        params = data.get("params", data)
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: 'params' must be an object of VAE settings, got {params!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in params if k not in names)
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
        _check_types(self)
        _check_positive(self, "vit_max_num_patch_per_side", "max_latent_size", "latent_patch_size",
                        "timestep_embed_dim")

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
    def small(cls) -> "UnifiedConfig":
        """A few hundred million parameters for benchmarks: the released vocabulary and VAE, a narrow
        8-layer decoder (hidden 1024, 401 M understanding parameters, 491 M in the decoder) and a small ViT."""
        return cls(
            llm=LLMConfig(vocab_size=152064, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                          num_attention_heads=16, num_key_value_heads=4),
            vit=ViTConfig(hidden_size=384, intermediate_size=1536, num_attention_heads=6, num_hidden_layers=6),
        )

    @classmethod
    def preset(cls, name: str) -> "UnifiedConfig":
        presets = {"full": cls.full, "small": cls.small, "tiny": cls.tiny}
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
        from unimedvl.utils.files import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("llm_config.json", self.llm.to_json_dict()),
                           ("vit_config.json", self.vit.to_json_dict()),
                           ("vae_config.json", self.vae.to_json_dict())):
            atomic_write_text(folder / name, json.dumps(data, indent=2) + "\n")


REFERENCE_MAX_PIXELS = 14 * 14 * 9 * 1024  # 1,806,336: the reference resize rules' pixel budget


@dataclass(frozen=True)
class ResizeBounds:
    """One resize rule's bounds: long side at most `max_size`, short side at least `min_size`,
    at most `max_pixels` (the stride, patch or latent cell, comes from the model config)."""

    max_size: int
    min_size: int
    max_pixels: int = REFERENCE_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_size", "min_size", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ResizeBounds.{name} must be a positive integer, got {value!r}")
        if self.min_size > self.max_size:
            raise ConfigError(f"ResizeBounds: min_size {self.min_size} exceeds max_size {self.max_size}")


@dataclass(frozen=True)
class ImageConfig:
    """How a model sizes images: the ViT input for questions and for generation contexts, the VAE
    input (editing), and the side of a generated image when none is asked for."""

    understanding_vit: ResizeBounds
    generation_vit: ResizeBounds
    vae: ResizeBounds
    default_size: int
    # The sides generation was trained at (a generated image drew one of them); empty: not recorded
    # (a released checkpoint), so no size is flagged as untrained.
    generation_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.default_size, bool) or not isinstance(self.default_size, int) or self.default_size < 1:
            raise ConfigError(f"ImageConfig.default_size must be a positive integer, got {self.default_size!r}")
        sizes = self.generation_sizes
        if not isinstance(sizes, (tuple, list)) or any(not is_finite_number(v, integer=True) or v < 1 for v in sizes):
            raise ConfigError(f"ImageConfig.generation_sizes must be positive integers, got {sizes!r}")
        object.__setattr__(self, "generation_sizes", tuple(sorted(set(sizes))))

    def untrained_sides(self, height: int, width: int) -> list[int]:
        """The sides of a height x width output that generation was not trained at (none when not recorded)."""
        if not self.generation_sizes:
            return []
        return sorted({side for side in (height, width) if side not in self.generation_sizes})

    @classmethod
    def reference(cls) -> "ImageConfig":
        """The rules of the released UniMedVL scripts (VQA ViT, generator ViT and VAE transforms), 1024 px output."""
        return cls(understanding_vit=ResizeBounds(980, 378, 2_007_040), generation_vit=ResizeBounds(980, 387),
                   vae=ResizeBounds(1024, 32), default_size=1024)

    @classmethod
    def trained(cls, *, vit_max: int, vit_min: int, vae_max: int, vae_min: int,
                generation_sizes: tuple[int, ...] = ()) -> "ImageConfig":
        """One ViT range for every use and one VAE range, as a training recipe sets them; output at `vae_max`."""
        vit = ResizeBounds(vit_max, vit_min)
        return cls(understanding_vit=vit, generation_vit=vit, vae=ResizeBounds(vae_max, vae_min), default_size=vae_max,
                   generation_sizes=tuple(generation_sizes))

    _JSON_KEYS = ("vae_max", "vae_min", "vit_max", "vit_min", "default_size")
    _OPTIONAL_JSON_KEYS = ("generation_sizes",)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str = "image_config.json") -> "ImageConfig":
        unknown = sorted(map(str, set(data) - set(cls._JSON_KEYS) - set(cls._OPTIONAL_JSON_KEYS)))
        missing = [k for k in cls._JSON_KEYS if k not in data]
        if unknown or missing:
            raise ConfigError(f"{source}: expected the keys {', '.join(cls._JSON_KEYS)} (and optionally "
                              f"{', '.join(cls._OPTIONAL_JSON_KEYS)})"
                              + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                              + (f"; missing: {', '.join(missing)}" if missing else ""))
        try:
            config = cls.trained(vit_max=data["vit_max"], vit_min=data["vit_min"], vae_max=data["vae_max"],
                                 vae_min=data["vae_min"], generation_sizes=data.get("generation_sizes") or ())
            return dataclasses.replace(config, default_size=data["default_size"])
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_json_dict(self) -> dict[str, Any]:
        """The `image_config.json` form: one ViT range and one VAE range with the reference pixel budget."""
        vit = self.understanding_vit
        if self.generation_vit != vit or {vit.max_pixels, self.vae.max_pixels} != {REFERENCE_MAX_PIXELS}:
            raise ConfigError("image_config.json holds one ViT range and the reference pixel budget; "
                              "this ImageConfig has more than that")
        out: dict[str, Any] = {"vae_max": self.vae.max_size, "vae_min": self.vae.min_size, "vit_max": vit.max_size,
                               "vit_min": vit.min_size, "default_size": self.default_size}
        if self.generation_sizes:  # absent when not recorded: v1 files stay byte-identical
            out["generation_sizes"] = list(self.generation_sizes)
        return out

    @classmethod
    def from_checkpoint_dir(cls, folder: str | Path) -> "ImageConfig":
        """The folder's `image_config.json`, or the reference rules when it has none (a released checkpoint)."""
        path = Path(folder) / "image_config.json"
        return cls.from_json_dict(_read_json(path)) if path.is_file() else cls.reference()

    def save_to_dir(self, folder: str | Path) -> None:
        from unimedvl.utils.files import atomic_write_text

        atomic_write_text(Path(folder) / "image_config.json", json.dumps(self.to_json_dict(), indent=2) + "\n")
