"""Options shared by several commands, each defined once: the model to load and the guidance knobs."""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

if TYPE_CHECKING:  # torch-free at import: the CLI's startup stays light
    from unimedvl.model.sampling import GuidanceKind

CheckpointOpt = typer.Option(None, "--checkpoint", "-c", help="Checkpoint folder in the released layout "
                             "(default: the built-in tiny model).")
DtypeOpt = typer.Option(None, "--dtype", help="Weight dtype: float32, bfloat16 (float16 on GPU). Default: "
                        "float32 on CPU, bfloat16 on GPU.")
DeviceOpt = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
Int8Opt = typer.Option(False, "--int8", help="Keep the decoder's linear layers as int8 (one scale per row): "
                       "a quarter of fp32's memory, faster decoding on CPU, outputs drift slightly.")
Int8DynamicOpt = typer.Option(False, "--int8-dynamic", help="CPU: int8 weights as --int8, and int8 activations "
                              "per call (FBGEMM's int8 kernels): faster than --int8, outputs drift a little more.")
ComputeOpt = typer.Option(None, "--compute", help="What a CPU computes in: float32 (default), bfloat16 (on CPUs "
                          "with AMX, e.g. Xeon Sapphire Rapids and later: several times faster matmuls, outputs "
                          "drift slightly; bf16 weights) or auto (bfloat16 where the CPU has AMX).")
SliceOpt = typer.Option(None, "--slice", help="DICOM / NIfTI: the frame or slice to read (default: the middle one).")
AxisOpt = typer.Option(2, "--axis", help="NIfTI: slicing axis after canonical reorientation (0 sagittal, "
                       "1 coronal, 2 axial).")
WindowOpt = typer.Option(None, "--window", help="DICOM / NIfTI: display window, a CT preset (lung, mediastinum, "
                         "soft_tissue, bone, brain, abdomen) or CENTER,WIDTH. Default: the file's own, else the "
                         "modality's rule.")


def read_options(slice_index: int | None, axis: int, window: str | None):  # noqa: ANN201
    """The reader's options from the CLI flags (checked before any model loads)."""
    from unimedvl.errors import InputError
    from unimedvl.imaging.intensity import parse_window
    from unimedvl.imaging.reader import ReadOptions

    try:
        parsed = None if window is None else parse_window(window)
    except ValueError as exc:
        raise InputError(f"--window: {exc}") from None
    return ReadOptions(window=parsed, slice_index=slice_index, axis=axis)


@dataclass(frozen=True)
class ModelChoice:
    """Which model a command uses; its configs can be read (and inputs checked) before the weights load."""

    checkpoint: Path | None
    dtype: str | None = None
    device: str | None = None
    mode: str = "full"  # "understanding": ask loads neither the generation expert nor the VAE
    int8: bool = False
    int8_dynamic: bool = False  # int8 weights and activations (CPU)
    compute: str | None = None  # the CPU compute dtype: float32 (None), bfloat16 or auto

    @property
    def folder(self) -> Path:
        from unimedvl.assets import default_checkpoint
        from unimedvl.errors import CheckpointError

        folder = self.checkpoint or default_checkpoint()
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder not found: {folder}")
        return folder

    @property
    def label(self) -> str:
        return str(self.checkpoint or "built-in model")

    def configs(self):  # noqa: ANN201 - (UnifiedConfig, ImageConfig), read from JSON only
        from unimedvl.config import ImageConfig, UnifiedConfig

        return UnifiedConfig.from_checkpoint_dir(self.folder), ImageConfig.from_checkpoint_dir(self.folder)

    def load(self):  # noqa: ANN201 - UniMedVL
        from unimedvl.inference.engine import UniMedVL

        return UniMedVL.from_pretrained(self.folder, dtype=self.dtype, device=self.device, mode=self.mode,
                                        quantize=self.quantize, compute=self.compute)

    @property
    def quantize(self) -> str | None:
        from unimedvl.errors import InputError

        if self.int8 and self.int8_dynamic:
            raise InputError("give --int8 or --int8-dynamic, not both")
        return "int8-dynamic" if self.int8_dynamic else "int8" if self.int8 else None


def progress(label: str) -> Callable[[int, int], None]:
    """A `step/total` line on stderr, rewritten in place."""
    def report(step: int, total: int) -> None:
        end = "\n" if step == total else ""
        print(f"\r{label}: step {step}/{total}", end=end, file=sys.stderr, flush=True)

    return report


# ------------------------------------------------------------------ guidance
# (parameter, flag, type, GuidanceOptions field, help)
GUIDANCE_FLAGS: tuple[tuple[str, str, type, str, str], ...] = (
    ("steps", "--steps", int, "num_timesteps", "Number of timesteps (N-1 model calls). Default 50."),
    ("shift", "--shift", float, "timestep_shift", "Timestep shift. Default 3.0."),
    ("cfg_text", "--cfg-text", float, "text_scale", "Text guidance scale. Default 4.0, or the checkpoint's "
     "sampling_config.json (UniMedVL-tiny: 6.0)."),
    ("cfg_image", "--cfg-image", float, "image_scale", "Image guidance scale. Default 1.0 (generate), 2.0 (edit)."),
    ("cfg_interval", "--cfg-interval", str, "interval", "Guidance interval lo,hi on the shifted time."),
    ("renorm", "--renorm", str, "renorm_type", "global, channel or text_channel."),
    ("renorm_min", "--renorm-min", float, "renorm_min", "Lower clamp of the renorm factor."),
    ("cache_interval", "--cache-interval", int, "cache_interval", "Run the network every N steps only and "
     "extrapolate the velocities in between (TaylorSeer-style caching; faster, slightly different). Default 1."),
)


def guidance_options(kind: GuidanceKind, **values: Any) -> dict[str, Any]:
    """The guidance settings the flags give (GuidanceOptions fields), checked now, before any model loads;
    the command lays them over the checkpoint's recommendation (`UniMedVL.guidance`)."""
    from unimedvl.errors import InputError
    from unimedvl.model.sampling import SamplingDefaults

    overrides: dict[str, Any] = {}
    for name, flag, _, field_name, _ in GUIDANCE_FLAGS:
        value = values.get(name)
        if value is None:
            continue
        if name == "cfg_interval":
            try:
                value = tuple(float(v) for v in value.split(","))
                if len(value) != 2:
                    raise ValueError
            except ValueError:
                raise InputError(f"{flag} must look like 0.4,1.0, got {values[name]!r}") from None
        overrides[field_name] = value
    SamplingDefaults().options(kind, **overrides)  # refuse bad values before loading
    return overrides


def with_guidance(kind: GuidanceKind) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the guidance flags; it receives the ones given as one `guidance: dict` argument
    (GuidanceOptions fields, for `UniMedVL.guidance`)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "guidance"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind_],
                                   default=typer.Option(None, flag, help=text))
                 for name, flag, kind_, _, text in GUIDANCE_FLAGS]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            values = {name: kwargs.pop(name) for name, *_ in GUIDANCE_FLAGS}
            command(**kwargs, guidance=guidance_options(kind, **values))

        wrapper.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in kept + added}
        return wrapper

    return decorate
