"""Rectified-flow sampling with classifier-free guidance, apart from the network.

Schedule (float32, like the reference)::

    u = linspace(1, 0, N);  t = s*u / (1 + (s-1)*u);  dt_i = t_i - t_{i+1};  steps i = 0..N-2
    x <- x - v(x, t_i) * dt_i          (v points from data to noise; t = 0 is data)

Guidance, applied only while `lo < t_i <= hi` and only when the text scale is > 1 (the reference's
rule; with text scale <= 1 the image scale does nothing):

* ``global`` / ``channel``:  v' = v_I + s_I((v_T + s_T(v - v_T)) - v_I)   (outer term only if s_I > 1),
  then v' *= clamp(|v| / (|v'| + 1e-8), renorm_min, 1), norm over all elements or per token.
* ``text_channel``:  v_t = (v_T + s_T(v - v_T)) * clamp(per-token |v| / |.|, renorm_min, 1),
  then v = v_I + s_I(v_t - v_I) if s_I > 1 (no second renorm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, TypeVar

import torch

from unimedvl.errors import InputError
from unimedvl.utils.numbers import is_finite_number

RenormType = Literal["global", "channel", "text_channel"]
Branch = Literal["cond", "text_uncond", "image_uncond"]
MAX_TIMESTEPS = 1000  # beyond this a run is a typo (the reference uses 50), not a request
MAX_CACHE_INTERVAL = 10
T = TypeVar("T", float, torch.Tensor)


@dataclass(frozen=True)
class GuidanceOptions:
    """How a generated image is sampled: steps, time shift and guidance (the reference's cfg_* knobs)."""

    num_timesteps: int = 50
    timestep_shift: float = 3.0
    text_scale: float = 4.0
    image_scale: float = 1.0
    interval: tuple[float, float] = (0.4, 1.0)
    renorm_type: RenormType = "global"
    renorm_min: float = 0.0
    # Run the network every `cache_interval` steps only and extrapolate each branch's velocity in between
    # from its last two evaluations (first-order Taylor in t, TaylorSeer-style); 1 runs it every step.
    cache_interval: int = 1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "interval", tuple(float(v) for v in self.interval))
        except (TypeError, ValueError):
            raise InputError(f"guidance interval must be two numbers lo, hi, got {self.interval!r}") from None
        if not is_finite_number(self.num_timesteps, integer=True) or not 2 <= self.num_timesteps <= MAX_TIMESTEPS:
            raise InputError(f"num_timesteps must be an integer in [2, {MAX_TIMESTEPS}], got {self.num_timesteps!r}")
        for name in ("timestep_shift", "text_scale", "image_scale", "renorm_min"):  # inf / nan give black images
            value = getattr(self, name)
            if not is_finite_number(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        if not all(is_finite_number(v) for v in self.interval):
            raise InputError(f"guidance interval must hold finite numbers, got {self.interval}")
        if not self.timestep_shift > 0:
            raise InputError(f"timestep_shift must be positive, got {self.timestep_shift}")
        if self.text_scale < 0 or self.image_scale < 0:
            raise InputError("guidance scales must be >= 0")
        if not 0.0 <= self.renorm_min <= 1.0:
            raise InputError(f"renorm_min must lie in [0, 1], got {self.renorm_min}")
        if len(self.interval) != 2:
            raise InputError(f"guidance interval must be two numbers lo, hi, got {self.interval}")
        lo, hi = self.interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise InputError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {self.interval}")
        if not is_finite_number(self.cache_interval, integer=True) or not 1 <= self.cache_interval <= MAX_CACHE_INTERVAL:
            raise InputError(f"cache_interval must be an integer in [1, {MAX_CACHE_INTERVAL}], got {self.cache_interval!r}")
        if self.renorm_type not in ("global", "channel", "text_channel"):
            raise InputError(f"renorm_type must be global, channel or text_channel, got {self.renorm_type!r}")

    def to_json_dict(self) -> dict[str, object]:
        """The options as JSON values (for results files)."""
        return _json_values({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def text_to_image(cls, **overrides: object) -> "GuidanceOptions":
        """BAGEL's text-to-image defaults (image guidance off: for T2I it only extrapolates v_cond)."""
        return cls(**overrides)  # type: ignore[arg-type]

    @classmethod
    def editing(cls, **overrides: object) -> "GuidanceOptions":
        """UniMedVL's (and BAGEL's) editing defaults."""
        base: dict[str, object] = dict(text_scale=4.0, image_scale=2.0, interval=(0.0, 1.0), renorm_type="text_channel")
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


SAMPLING_FILE = "sampling_config.json"
GuidanceKind = Literal["text_to_image", "editing"]
GUIDANCE_KINDS: tuple[GuidanceKind, ...] = ("text_to_image", "editing")


@dataclass(frozen=True)
class SamplingDefaults:
    """A checkpoint's recommended sampling (`sampling_config.json`), per kind of call: fields of
    :class:`GuidanceOptions` that replace BAGEL's text-to-image and UniMedVL's editing defaults.

    A small model can want other settings than the 14B reference (UniMedVL-tiny draws the requested
    modality more often with a stronger text guidance), so the checkpoint says so and every entry
    point (engine, CLI, HTTP API, evaluation) starts from it; what a caller sets still wins.
    """

    text_to_image: dict[str, object] = field(default_factory=dict)
    editing: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = set(GuidanceOptions.__dataclass_fields__)
        for kind in GUIDANCE_KINDS:
            values = getattr(self, kind)
            if not isinstance(values, dict):
                raise InputError(f"sampling defaults: {kind} must be a mapping of guidance settings, got {values!r}")
            unknown = sorted(map(str, set(values) - names))
            if unknown:
                raise InputError(f"sampling defaults: {kind} has unknown setting(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(names))}")
            self.options(kind)  # refuses out-of-range values now, not at the first generate call

    def options(self, kind: GuidanceKind, **overrides: object) -> GuidanceOptions:
        """The options of one call: the kind's built-in defaults, then this checkpoint's, then `overrides`."""
        if kind not in GUIDANCE_KINDS:
            raise InputError(f"guidance kind must be one of {GUIDANCE_KINDS}, got {kind!r}")
        factory = GuidanceOptions.editing if kind == "editing" else GuidanceOptions.text_to_image
        return factory(**{**getattr(self, kind), **overrides})

    @classmethod
    def from_json_dict(cls, data: dict[str, object]) -> "SamplingDefaults":
        unknown = sorted(map(str, set(data) - set(GUIDANCE_KINDS)))
        if unknown:
            raise InputError(f"sampling defaults: unknown kind(s) {', '.join(unknown)}; known: {', '.join(GUIDANCE_KINDS)}")
        return cls(**{kind: data.get(kind) or {} for kind in GUIDANCE_KINDS})  # type: ignore[arg-type]

    def to_json_dict(self) -> dict[str, object]:
        return {kind: _json_values(getattr(self, kind)) for kind in GUIDANCE_KINDS if getattr(self, kind)}

    @classmethod
    def from_checkpoint_dir(cls, folder: str | Path) -> "SamplingDefaults":
        """The folder's `sampling_config.json`, or no recommendation (the built-in defaults) without one."""
        from unimedvl.errors import CheckpointError
        from unimedvl.utils.files import read_json_object

        path = Path(folder) / SAMPLING_FILE
        if not path.is_file():
            return cls()
        try:
            return cls.from_json_dict(read_json_object(path, "sampling config"))
        except InputError as exc:
            raise CheckpointError(f"{path}: {exc}") from None

    def save_to_dir(self, folder: str | Path) -> None:
        """Write `sampling_config.json` atomically (nothing when there is no recommendation)."""
        import json

        from unimedvl.utils.files import atomic_write_text

        data = self.to_json_dict()
        if data:
            atomic_write_text(Path(folder) / SAMPLING_FILE, json.dumps(data, indent=2) + "\n")


def _json_values(options: dict[str, object]) -> dict[str, object]:
    """Guidance settings as JSON holds them (the interval tuple as a list)."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in options.items()}


def shift_time(t: T, shift: float) -> T:
    """The timestep shift `s t / (1 + (s - 1) t)`, for a float or a tensor (training draws use it too)."""
    return shift * t / (1 + (shift - 1) * t)


def flow_schedule(num_timesteps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted times `t_0..t_{N-2}` and step sizes `dt` (float32), N-1 model calls in all."""
    t = shift_time(torch.linspace(1, 0, num_timesteps), shift)
    return t[:-1], t[:-1] - t[1:]


def guidance_active(t: torch.Tensor, interval: tuple[float, float]) -> bool:
    return bool((t > interval[0]) & (t <= interval[1]))


def _norm(v: torch.Tensor, per_token: bool) -> torch.Tensor:
    return torch.norm(v, dim=-1, keepdim=True) if per_token else torch.norm(v)


def combine_guidance(v_cond: torch.Tensor, v_text: torch.Tensor | None, v_image: torch.Tensor | None, *,
                     text_scale: float, image_scale: float, renorm_type: RenormType, renorm_min: float
                     ) -> torch.Tensor:
    """Combine branch velocities `[N, C]` as the reference does (see module docstring)."""
    if text_scale <= 1.0:
        return v_cond
    assert v_text is not None
    use_image = image_scale > 1.0
    v_t = v_text + text_scale * (v_cond - v_text)
    if renorm_type == "text_channel":
        v_t = v_t * (_norm(v_cond, True) / (_norm(v_t, True) + 1e-8)).clamp(min=renorm_min, max=1.0)
        return v_image + image_scale * (v_t - v_image) if use_image else v_t  # type: ignore[operator]
    v_new = v_image + image_scale * (v_t - v_image) if use_image else v_t  # type: ignore[operator]
    per_token = renorm_type == "channel"
    return v_new * (_norm(v_cond, per_token) / (_norm(v_new, per_token) + 1e-8)).clamp(min=renorm_min, max=1.0)


@dataclass
class StepRecord:
    """What one Euler step used (kept when the caller asks for a trace)."""

    t: float
    v: torch.Tensor
    branches: dict[str, torch.Tensor] = field(default_factory=dict)
    computed: bool = True  # False: the branch velocities were extrapolated (cache_interval > 1)


VelocityFn = Callable[[Branch, torch.Tensor, torch.Tensor], torch.Tensor]
VelocitiesFn = Callable[[list[Branch], torch.Tensor, torch.Tensor], dict[Branch, torch.Tensor]]


def sample_flow(noise: torch.Tensor, velocity: VelocityFn | None, options: GuidanceOptions, *,
                on_step: Callable[[int, int, StepRecord], None] | None = None,
                velocities: VelocitiesFn | None = None) -> torch.Tensor:
    """Integrate from `noise` `[N, C]` (t = 1) to data (t = 0).

    The network runs through `velocities(branches, x, t)` (every branch a step needs, in one call: the
    engine batches them into one forward) or, when that is not given, `velocity(branch, x, t)` per branch.
    """
    if velocities is None:
        if velocity is None:
            raise ValueError("give velocity or velocities")

        def velocities(names: list[Branch], x: torch.Tensor, t: torch.Tensor) -> dict[Branch, torch.Tensor]:
            return {name: velocity(name, x, t) for name in names}  # type: ignore[misc]

    timesteps, dts = flow_schedule(options.num_timesteps, options.timestep_shift)
    x = noise
    history: dict[Branch, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # the last two (t, v) of each branch
    for i, (t, dt) in enumerate(zip(timesteps, dts)):
        active = guidance_active(t, options.interval)
        text_scale = options.text_scale if active else 1.0
        image_scale = options.image_scale if active else 1.0
        needed: list[Branch] = ["cond"]
        if text_scale > 1.0:
            needed.append("text_uncond")
            if image_scale > 1.0:
                needed.append("image_uncond")
        compute = (options.cache_interval == 1 or i % options.cache_interval == 0
                   or any(len(history.get(b, ())) < 2 for b in needed))
        if compute:
            branches = velocities(needed, x, t)
            for name, value in branches.items():
                history[name] = [*history.get(name, [])[-1:], (t, value)]
        else:
            branches = {name: _extrapolate(history[name], t) for name in needed}
        v = combine_guidance(branches["cond"], branches.get("text_uncond"), branches.get("image_uncond"),
                             text_scale=text_scale, image_scale=image_scale,
                             renorm_type=options.renorm_type, renorm_min=options.renorm_min)
        x = x - v.to(x.dtype) * dt
        if on_step is not None:
            on_step(i, len(timesteps), StepRecord(t=float(t), v=v, branches=branches, computed=compute))
    return x


def _extrapolate(points: list[tuple[torch.Tensor, torch.Tensor]], t: torch.Tensor) -> torch.Tensor:
    """First-order Taylor step from the last two evaluations: v(t) ~ v1 + (t - t1) (v1 - v0) / (t1 - t0)."""
    (t0, v0), (t1, v1) = points
    return v1 + (v1 - v0) * float((t - t1) / (t1 - t0))
