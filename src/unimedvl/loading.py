"""Build the model from a checkpoint folder in the released layout: the one way to obtain a model.

Folder contents read::

    llm_config.json, vit_config.json        model configs (reference overrides applied, config.py)
    vae_config.json                         optional; FLUX defaults otherwise
    ema.safetensors | model.safetensors     network weights (or *_bf16 twins, or a sharded index)
    ae.safetensors                          VAE weights (needed for image generation and editing)
    tokenizer.json | vocab.json+merges.txt  Qwen2.5 tokenizer
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from unimedvl.checkpoint import (DERIVABLE_KEYS, KNOWN_EXTRA_PREFIXES, LoadReport, load_safetensors_into,
                                 strip_wrapper_prefix, weight_files)
from unimedvl.config import UnifiedConfig
from unimedvl.errors import CheckpointError, ConfigError
from unimedvl.model.unified import UniMedVLModel
from unimedvl.model.vae import AutoEncoder
from unimedvl.tokenizer import TextTokenizer

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
    image_config: dict | None = None  # optional `image_config.json`: the sizes a small model was trained at


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


def load_checkpoint(folder: str | Path, *, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, weights: Literal["ema", "model"] = "ema",
                    strict: bool = True, load_vae: bool = True) -> LoadedCheckpoint:
    """Load config, network, VAE and tokenizer from `folder`. Raises CheckpointError/ConfigError on bad input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    config = UnifiedConfig.from_checkpoint_dir(folder)
    tokenizer = TextTokenizer.from_dir(folder)
    if tokenizer.vocab_size > config.llm.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.llm.vocab_size}"
        )
    files = weight_files(folder, weights)
    with torch.device("meta"):
        model = UniMedVLModel(config)
    reports = [load_safetensors_into(model, files, dtype=dtype, device=device, strict=strict,
                                     derivable=DERIVABLE_KEYS, known_extras=KNOWN_EXTRA_PREFIXES)]
    model.eval().requires_grad_(False)
    vae = None
    if load_vae:
        ae_path = folder / "ae.safetensors"
        if ae_path.is_file():
            with torch.device("meta"):
                vae = AutoEncoder(config.vae)
            # The VAE stays fp32 on CPU (it is small, and bf16 convs are slow there).
            vae_dtype = torch.float32 if device.type == "cpu" else dtype
            reports.append(load_safetensors_into(vae, [ae_path], dtype=vae_dtype, device=device, strict=strict,
                                                 key_prefix=strip_wrapper_prefix([ae_path])))
            vae.eval().requires_grad_(False)
        else:
            log.warning("%s has no ae.safetensors: image generation and editing are unavailable", folder)
    for report in reports:
        log.info("%s", report.format())
    image_config = None
    if (folder / "image_config.json").is_file():
        import json

        try:
            image_config = json.loads((folder / "image_config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"image_config.json is not valid JSON: {exc}") from None
    return LoadedCheckpoint(config=config, model=model, vae=vae, tokenizer=tokenizer, reports=reports,
                            image_config=image_config)
