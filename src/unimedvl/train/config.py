"""Typed training recipes (one YAML per curriculum stage), with `key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unimedvl.config import ImageConfig
from unimedvl.errors import ConfigError
from unimedvl.utils.numbers import is_finite_number

FAMILIES = ("understanding", "generation", "interleaved")


@dataclass(frozen=True)
class ModelInit:
    """Where the weights come from: a preset (random init), a released checkpoint, or components."""

    preset: str | None = "tiny"  # build from UnifiedConfig.<preset>() with random weights
    checkpoint: str | None = None  # a folder in the released layout (UniMedVL / BAGEL / our export)
    llm: str | None = None  # components: HF Qwen2 safetensors folder (gen expert copied from und expert)
    vit: str | None = None  # HF SigLIP safetensors folder
    vae: str | None = None  # ae.safetensors
    tokenizer: str | None = None  # folder with tokenizer.json (default: the checkpoint's)
    config_dir: str | None = None  # llm_config.json / vit_config.json (/ vae_config.json) for a preset-free build


def _check_number(obj: Any, name: str, *, low: float | None = None, high: float | None = None,
                  integer: bool = False, above: float | None = None, below: float | None = None) -> None:
    """A recipe value: a finite number (an integer where asked) within its bounds, or one named error."""
    value = getattr(obj, name)
    where = f"{_SECTION.get(type(obj).__name__, '')}{name}"
    if not is_finite_number(value, integer=integer):
        raise ConfigError(f"{where} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high) or (
            above is not None and value <= above) or (below is not None and value >= below):
        bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "",
                  f"> {above}" if above is not None else "", f"< {below}" if below is not None else ""]
        raise ConfigError(f"{where} must be {' and '.join(b for b in bounds if b)}, got {value!r}")


_SECTION = {"DataConfig": "data.", "OptimConfig": "optim.", "TrainConfig": "", "VitWarmup": "vit_warmup."}


@dataclass(frozen=True)
class DataConfig:
    corpus: str = ""  # a folder built by `unimedvl data build`
    split: str = "train"
    mix: dict[str, float] = field(default_factory=lambda: {"understanding": 0.75, "generation": 0.25})
    tokens_per_pack: int = 1024  # expected tokens per packed sequence
    max_tokens_per_sample: int = 1024
    packs_per_step: int = 2  # global batch, split over ranks (and accumulated within a rank)
    vae_max: int = 64
    vae_min: int = 32
    vit_max: int = 56
    vit_min: int = 28
    text_dropout: float = 0.1
    vit_dropout: float = 0.3
    vae_dropout: float = 0.3
    # Draw weight of each source within a family = (its sample count) ** source_balance:
    # 1.0 = every sample equally often, 0.0 = every source equally often. One number for every
    # family, or a mapping family -> number (families left out use 1.0).
    source_balance: float | dict[str, float] = 1.0
    # Extra draw weight of named sources within a family, on top of the balance: family -> source ->
    # multiplier (e.g. {understanding: {breastmnist: 2.5}} for a small set the model learns slowly).
    source_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    # Within a source, draw every class (the label a sample was made from) equally often: with
    # balanced classes every yes / no phrasing is answered yes and no equally often.
    label_balance: bool = False
    # Under label_balance, sample variants of a source drawn at the class frequencies the source has
    # (source -> variants, e.g. {breastmnist: [choice]}): its class-name questions then learn the base
    # rate, while its yes / no phrasings stay balanced. The variants keep their share of the source.
    natural_label_variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Probability that an image a sample reads (understanding samples) is re-cropped, re-sampled and
    # re-windowed (`imaging/augment.py`).
    augment: float = 0.0
    # Long sides at which generated images are drawn (one per sample, at random; the sample's other VAE
    # images keep their size relative to it, so a x2 super-resolution input is drawn at half of it).
    # Empty: every VAE image by the vae_min / vae_max rule.
    vae_sizes: tuple[int, ...] = ()
    # Processes that make the coming steps' packs while the current step trains (`train/prefetch.py`);
    # 0 makes them in the training process. The packs, and so the run, are the same either way. Off by
    # default: on 2 cores the model's threads already fill the machine (bench/curriculum_step.py: 1.02x).
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens_per_pack", "max_tokens_per_sample", "packs_per_step"):
            _check_number(self, name, low=1, integer=True)
        _check_number(self, "workers", low=0, integer=True)
        for name in ("text_dropout", "vit_dropout", "vae_dropout"):
            _check_number(self, name, low=0.0, high=1.0)
        object.__setattr__(self, "vae_sizes", tuple(self.vae_sizes))
        bad = [s for s in self.vae_sizes if not is_finite_number(s, integer=True) or not self.vae_min <= s <= self.vae_max]
        if bad:
            raise ConfigError(f"data.vae_sizes must be integers between vae_min ({self.vae_min}) and vae_max "
                              f"({self.vae_max}), got {list(self.vae_sizes)}")
        if not 0.0 <= self.augment <= 1.0:
            raise ConfigError(f"data.augment is a probability in [0, 1], got {self.augment!r}")
        balances = self.source_balance if isinstance(self.source_balance, dict) else {"*": self.source_balance}
        unknown_families = set(balances) - set(FAMILIES) - {"*"}
        if unknown_families:
            raise ConfigError(f"data.source_balance: unknown families {sorted(unknown_families)}; use {list(FAMILIES)}")
        for family, value in balances.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                where = "" if family == "*" else f".{family}"
                raise ConfigError(f"data.source_balance{where} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.source_weights, dict) or set(self.source_weights) - set(FAMILIES):
            raise ConfigError(f"data.source_weights maps families {list(FAMILIES)} to {{source: multiplier}}, "
                              f"got {self.source_weights!r}")
        for family, weights in self.source_weights.items():
            if not isinstance(weights, dict) or not all(
                    is_finite_number(v) and v >= 0 for v in weights.values()):
                raise ConfigError(f"data.source_weights.{family} maps source names to non-negative numbers, "
                                  f"got {weights!r}")
        if not isinstance(self.natural_label_variants, dict) or not all(
                isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
                for v in self.natural_label_variants.values()):
            raise ConfigError(f"data.natural_label_variants maps source names to lists of sample variants "
                              f"(e.g. {{breastmnist: [choice]}}), got {self.natural_label_variants!r}")
        object.__setattr__(self, "natural_label_variants",
                           {str(k): tuple(v) for k, v in self.natural_label_variants.items()})
        unknown = set(self.mix) - set(FAMILIES)
        if unknown:
            raise ConfigError(f"data.mix: unknown families {sorted(unknown)}; use {list(FAMILIES)}")
        if not self.mix or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ConfigError("data.mix must hold non-negative ratios with a positive sum")
        try:
            self.image_config  # noqa: B018 - validates vit_min/vit_max/vae_min/vae_max
        except ConfigError as exc:
            raise ConfigError(f"data image sizes (vit_min/vit_max/vae_min/vae_max): {exc}") from None

    @property
    def image_config(self) -> ImageConfig:
        """How this stage sizes images; an export writes it as the model's `image_config.json`."""
        return ImageConfig.trained(vit_max=self.vit_max, vit_min=self.vit_min, vae_max=self.vae_max,
                                   vae_min=self.vae_min, generation_sizes=self.vae_sizes)

    def balance_for(self, family: str) -> float:
        """The source balance of one task family."""
        if isinstance(self.source_balance, dict):
            return float(self.source_balance.get(family, 1.0))
        return float(self.source_balance)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-15
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = 1e-7
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # The vision encoder's learning rate as a fraction of `lr`: below 1 it keeps most of what a warm start
    # (a curriculum's vit_warmup) taught it while the connector and the language model learn to read it.
    vit_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_number(self, "lr", above=0.0)
        _check_number(self, "min_lr", low=0.0)
        _check_number(self, "eps", above=0.0)
        _check_number(self, "weight_decay", low=0.0)
        _check_number(self, "warmup_steps", low=0, integer=True)
        _check_number(self, "grad_clip", above=0.0)
        _check_number(self, "ema_decay", low=0.0, below=1.0)
        _check_number(self, "vit_lr_scale", low=0.0)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")


@dataclass(frozen=True)
class VitWarmup:
    """A curriculum's optional `vit_warmup` step (train/vit_warmup.py): the ViT learns the corpus labels first."""

    steps: int = 1500
    batch: int = 32
    lr: float = 1.0e-3
    weight_decay: float = 0.01
    side: int = 56  # the side the stages read images at (their vit_max)
    augment: float = 0.5  # probability of the stages' reading augmentation
    keep_side: int = 128  # decoded images are cached at this short side

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "side", "keep_side"):
            _check_number(self, name, low=1, integer=True)
        _check_number(self, "lr", above=0.0)
        _check_number(self, "weight_decay", low=0.0)
        _check_number(self, "augment", low=0.0, high=1.0)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VitWarmup":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(values) - names))
        if unknown:
            raise ConfigError(f"vit_warmup: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**values)


@dataclass(frozen=True)
class TrainConfig:
    stage: str = "foundation"
    model: ModelInit = field(default_factory=ModelInit)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    total_steps: int = 100
    seed: int = 0
    timestep_shift: float = 1.0
    ce_weight: float = 1.0
    mse_weight: float = 1.0
    freeze_vae: bool = True
    freeze_vit: bool = False
    freeze_und: bool = False  # train only the generation expert (and generation heads)
    activation_checkpointing: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (master weights stay fp32); for GPUs
    # Packs attend sample by sample (faster as packs grow: 1.1-2.0x a step at 5-16 samples a pack, bench/train.py)
    # or through one [L, L] mask ("dense"): the same rules, other float sums (UniMedVL-tiny's recipe pins it).
    packed_attention: Literal["per_sample", "dense"] = "per_sample"
    output_dir: str = "outputs/train"
    save_every: int = 50
    log_every: int = 1
    resume: bool = True

    def __post_init__(self) -> None:
        for name in ("total_steps", "save_every", "log_every"):
            _check_number(self, name, low=1, integer=True)
        _check_number(self, "seed", low=0, below=2**63, integer=True)
        _check_number(self, "timestep_shift", above=0.0)
        _check_number(self, "ce_weight", low=0.0)
        _check_number(self, "mse_weight", low=0.0)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        from unimedvl.utils.files import read_yaml_mapping

        path = Path(path)
        data = read_yaml_mapping(path, "recipe")
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
            key, value = item.split("=", 1)
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            try:
                node[parts[-1]] = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {key}: the value is not valid YAML ({type(exc).__name__})") from None
        return cls.from_dict(data, path.name)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "recipe") -> "TrainConfig":
        def build(kind: type, values: dict[str, Any], where: str) -> Any:
            import typing

            names = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(map(str, set(values) - names))
            if unknown:
                raise ConfigError(f"{origin}: unknown key(s) in {where}: {', '.join(unknown)}")
            hints = typing.get_type_hints(kind)
            for key, value in list(values.items()):
                # YAML reads 3e-4 (no dot) as a string, and users write numbers as strings: coerce and check.
                if hints[key] is float and isinstance(value, (str, int)) and not isinstance(value, bool):
                    try:
                        values[key] = float(value)
                    except ValueError:
                        raise ConfigError(f"{origin}: {where}.{key} must be a number, got {value!r}") from None
                elif hints[key] is int and not isinstance(value, int):
                    raise ConfigError(f"{origin}: {where}.{key} must be an integer, got {value!r}")
                elif hints[key] is bool and not isinstance(value, bool):
                    raise ConfigError(f"{origin}: {where}.{key} must be true or false, got {value!r}")
                elif typing.get_origin(hints[key]) is Literal and value not in typing.get_args(hints[key]):
                    choices = ", ".join(repr(a) for a in typing.get_args(hints[key]))
                    raise ConfigError(f"{origin}: {where}.{key} must be one of {choices}, got {value!r}")
            try:
                return kind(**values)
            except TypeError as exc:
                raise ConfigError(f"{origin}: {where}: {exc}") from None

        values = dict(data)
        nested = {"model": ModelInit, "data": DataConfig, "optim": OptimConfig}
        for key, kind in nested.items():
            if key in values:
                if values[key] is not None and not isinstance(values[key], dict):
                    raise ConfigError(f"{origin}: {key} must be a section (a mapping), got {values[key]!r}")
                sub = dict(values[key] or {})
                if key == "optim" and "betas" in sub:
                    betas = sub["betas"]
                    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
                            is_finite_number(b) and 0 <= b < 1 for b in betas):
                        raise ConfigError(f"{origin}: optim.betas must be two numbers in [0, 1), got {betas!r}")
                    sub["betas"] = tuple(float(b) for b in betas)
                values[key] = build(kind, sub, key)
        return build(cls, values, "the top level")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
