"""The checkpoint folder, in the released layout: read by `load_checkpoint`, written by `save_checkpoint`.

    llm_config.json, vit_config.json        model configs (reference overrides applied, config.py)
    vae_config.json                         optional; FLUX defaults otherwise
    image_config.json                       optional; the sizes a model was trained at (ImageConfig)
    sampling_config.json                    optional; recommended guidance per call kind (SamplingDefaults)
    capabilities.json                       optional; whether it was trained for think mode
    ema.safetensors | model.safetensors     network weights (or *_bf16 twins, or a sharded index)
    ae.safetensors                          VAE weights (needed for image generation and editing)
    tokenizer.json | vocab.json+merges.txt  Qwen2.5 tokenizer

Every consumer (engine, trainer, evaluation, tools) obtains a model here; the network itself is
built by `model/builder.py` and filled through the strict safetensors path (`weights.py`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from unimedvl.checkpoint import keymaps
from unimedvl.checkpoint.weights import KeyMap, LoadReport, load_weights, safetensors_files, weight_files
from unimedvl.config import ImageConfig, UnifiedConfig, VAEConfig
from unimedvl.errors import CheckpointError, ConfigError
from unimedvl.model.builder import build_model, build_vae
from unimedvl.model.layers import Int8DynamicLinear, Int8Linear, cpu_has_amx, pack_int8_dynamic, quantize_linears
from unimedvl.model.sampling import SamplingDefaults
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder
from unimedvl.text.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedCheckpoint:
    config: UnifiedConfig
    model: UniMedVLModel
    vae: AutoEncoder | None
    tokenizer: TextTokenizer
    reports: list[LoadReport]
    image_config: ImageConfig  # image_config.json, or the reference rules for a released checkpoint
    # capabilities.json "think": whether the checkpoint was trained for think mode; None: not recorded
    # (a released checkpoint, whose reference supports it).
    think_trained: bool | None = None
    mode: str = "full"  # "understanding": no generation expert, no VAE
    quantize: str | None = None  # "int8": the decoder's linear layers are int8
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)  # sampling_config.json, or none

CAPABILITIES_FILE = "capabilities.json"


def read_think_trained(folder: str | Path) -> bool | None:
    """`capabilities.json`'s "think" (True / False), or None when the folder has no such file."""
    from unimedvl.utils.files import read_json_object

    path = Path(folder) / CAPABILITIES_FILE
    if not path.is_file():
        return None
    data = read_json_object(path, "capabilities file")
    think = data.get("think")
    if not isinstance(think, bool) or set(data) - {"think"}:
        raise CheckpointError(f"{path}: expected {{\"think\": true or false}}, got {data}")
    return think


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Storage dtype: fp32 by default on CPU, bf16 on GPU. fp16 is refused on CPU (no fp16 compute there)."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
        dtype = DTYPES[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("float16 weights are supported on GPU only; use float32 or bfloat16 on CPU")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"unsupported dtype {dtype}")
    return dtype


COMPUTE_CHOICES = ("float32", "bfloat16", "auto")
# "auto" takes bf16 only for models whose matmuls are large enough to gain: on an AMX machine bf16 made a
# hidden-1024 model's text-to-image 1.7x faster and a hidden-192 one's slower (conversions dominate).
AUTO_BF16_MIN_HIDDEN = 1024


def resolve_compute(compute: str | None, dtype: str | torch.dtype | None, device: torch.device,
                    hidden_size: int) -> tuple[torch.dtype, torch.dtype]:
    """(storage dtype, CPU compute dtype) for a load. `compute`: None / "float32" (fp32, the default),
    "bfloat16", or "auto" (bf16 where the CPU has bf16 matrix units and the model is large enough to
    gain). bf16 compute keeps bf16 weights (fp32 ones would be cast at every call). On GPU the model
    computes in its weight dtype."""
    if compute is not None and compute not in COMPUTE_CHOICES:
        raise ConfigError(f"unknown compute dtype {compute!r}; choose one of {', '.join(COMPUTE_CHOICES)}")
    if device.type != "cpu":
        storage = resolve_dtype(dtype, device)
        if compute not in (None, "auto") and DTYPES[compute] != storage:
            raise ConfigError(f"on {device.type} the model computes in its weight dtype ({storage}); "
                              "choose it with dtype / --dtype")
        return storage, storage
    if compute == "auto":
        gains = hidden_size >= AUTO_BF16_MIN_HIDDEN and cpu_has_amx()
        compute = "bfloat16" if gains else "float32"
    if compute != "bfloat16":
        return resolve_dtype(dtype, device), torch.float32
    storage = resolve_dtype(dtype if dtype is not None else "bfloat16", device)
    if storage != torch.bfloat16:
        raise ConfigError(f"bfloat16 compute keeps bfloat16 weights; {storage} weights would be cast at every call "
                          "(leave dtype / --dtype unset)")
    if not cpu_has_amx():
        log.warning("this CPU has no bf16 matrix units (AMX): bfloat16 compute will be far slower than float32")
    return storage, torch.bfloat16


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return device


def load_vae(path: Path, config: VAEConfig, *, dtype: torch.dtype, device: torch.device,
             strict: bool = True) -> tuple[AutoEncoder, LoadReport]:
    """The FLUX autoencoder from `ae.safetensors` (a DDP `module.` prefix is accepted)."""
    vae = build_vae(config)
    report = load_weights(vae, safetensors_files(path, "VAE weights"), keymaps.VAE, dtype=dtype, device=device,
                          strict=strict)
    return vae, report


def load_component(model: UniMedVLModel, path: str | Path, key_map: KeyMap) -> LoadReport:
    """Fill one part of an initialised model (fp32, its device) from a component checkpoint, strictly.

    `key_map` is `keymaps.QWEN2` (both experts) or `keymaps.SIGLIP`; every key of its scope must
    be filled, or be one the map allows to keep its initial value.
    """
    weight = model.language_model.model.embed_tokens.weight
    return load_weights(model, safetensors_files(Path(path), key_map.name), key_map, dtype=torch.float32,
                        device=weight.device)


# What an understanding-only load leaves out: the generation expert, the latent heads and table.
GENERATION_ONLY = (r"_moe_gen\.", r"^latent_pos_embed\.", r"^time_embedder\.", r"^vae2llm\.", r"^llm2vae\.")
LOAD_MODES = ("full", "understanding")
QUANTIZATIONS = (None, "int8", "int8-dynamic")


def load_checkpoint(folder: str | Path, *, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, weights: Literal["ema", "model"] = "ema",
                    strict: bool = True, load_vae_weights: bool = True,
                    mode: Literal["full", "understanding"] = "full",
                    quantize: Literal["int8", "int8-dynamic"] | None = None,
                    compute: Literal["float32", "bfloat16", "auto"] | None = None) -> LoadedCheckpoint:
    """Load config, network, VAE and tokenizer from `folder`. Raises CheckpointError/ConfigError on bad input.

    `mode="understanding"` reads neither the generation expert nor the VAE (they stay unallocated):
    the 14B model's understanding path needs 8.05 B of its 14.6 B parameters. `quantize="int8"` keeps
    the decoder's linear layers as int8 with one scale per output row (quantized while loading);
    `"int8-dynamic"` (CPU) also quantizes their inputs per call and multiplies in int8 (FBGEMM): faster, a
    little more drift.
    `compute` is what a CPU computes in (see `resolve_compute`): fp32 by default; "bfloat16" or "auto"
    for CPUs with bf16 matrix units, where the network's matmuls run several times faster.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    if mode not in LOAD_MODES:
        raise ConfigError(f"mode must be one of {LOAD_MODES}, got {mode!r}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be None, 'int8' or 'int8-dynamic', got {quantize!r}")
    device = resolve_device(device)
    config = UnifiedConfig.from_checkpoint_dir(folder)
    dtype, compute_dtype = resolve_compute(compute, dtype, device, config.llm.hidden_size)
    image_config = ImageConfig.from_checkpoint_dir(folder)
    sampling = SamplingDefaults.from_checkpoint_dir(folder)  # before the weights: a bad file fails fast
    tokenizer = TextTokenizer.from_dir(folder)
    if tokenizer.vocab_size > config.llm.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.llm.vocab_size}"
        )
    files = weight_files(folder, weights)
    model = build_model(config)
    if quantize == "int8-dynamic" and device.type != "cpu":
        raise ConfigError("quantize='int8-dynamic' runs on CPU (FBGEMM's int8 kernels); use 'int8' on a GPU")
    if quantize is not None:
        kind = Int8DynamicLinear if quantize == "int8-dynamic" else Int8Linear
        quantize_linears(model.language_model, lambda name: True, kind)
    skipped = GENERATION_ONLY if mode == "understanding" else ()
    released = replace(keymaps.RELEASED, name=", ".join(f.name for f in files), skipped=skipped)
    reports = [load_weights(model, files, released, dtype=dtype, device=device, strict=strict)]
    if quantize == "int8-dynamic":
        pack_int8_dynamic(model)  # weights and biases are in: hand them to FBGEMM
    model.eval().requires_grad_(False)
    model.cpu_compute_dtype = compute_dtype
    vae = None
    if load_vae_weights and mode == "full":
        ae_path = folder / "ae.safetensors"
        if ae_path.is_file():
            # On CPU the VAE computes in the compute dtype: fp32 by default (bf16 convolutions are slow on
            # most CPUs), bf16 with bf16 compute (AMX: its decoder 6x faster than fp32 on one such machine).
            vae_dtype = compute_dtype if device.type == "cpu" else dtype
            vae, report = load_vae(ae_path, config.vae, dtype=vae_dtype, device=device, strict=strict)
            reports.append(report)
            vae.eval().requires_grad_(False)
            if device.type == "cpu":
                vae.to(memory_format=torch.channels_last)  # faster CPU convolutions; sums reordered (~1e-4 on [-1, 1])
        else:
            log.warning("%s has no ae.safetensors: image generation and editing are unavailable", folder)
    for report in reports:
        log.info("%s", report.format())
    return LoadedCheckpoint(config=config, model=model, vae=vae, tokenizer=tokenizer, reports=reports,
                            image_config=image_config, think_trained=read_think_trained(folder), mode=mode,
                            quantize=quantize, sampling=sampling)


def _atomic_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def save_vae(folder: str | Path, vae: AutoEncoder, config: VAEConfig) -> None:
    """`ae.safetensors` and `vae_config.json` (a VAE of our own; the loader reads both)."""
    import json

    from unimedvl.utils.files import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_safetensors({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, folder / "ae.safetensors")
    atomic_write_text(folder / "vae_config.json", json.dumps(config.to_json_dict(), indent=2) + "\n")


def save_checkpoint(folder: str | Path, *, config: UnifiedConfig, weights: dict[str, torch.Tensor],
                    vae_weights: dict[str, torch.Tensor], tokenizer: TextTokenizer, image_config: ImageConfig,
                    think_trained: bool | None = None) -> Path:
    """Write a folder `load_checkpoint` reads: weights in bf16 (as released), the VAE as it is, configs, tokenizer
    (and `capabilities.json` when `think_trained` is known).

    Every file is written atomically (temporary name, then rename).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_safetensors({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in weights.items()},
                        folder / "ema.safetensors")
    _atomic_safetensors({k: v.detach().cpu().contiguous() for k, v in vae_weights.items()}, folder / "ae.safetensors")
    config.save_to_dir(folder)
    tokenizer.save(folder)
    image_config.save_to_dir(folder)
    if think_trained is not None:
        write_capabilities(folder, think_trained=think_trained)
    return folder


def write_capabilities(folder: str | Path, *, think_trained: bool) -> None:
    from unimedvl.utils.files import atomic_write_text

    atomic_write_text(Path(folder) / CAPABILITIES_FILE, json.dumps({"think": think_trained}) + "\n")
