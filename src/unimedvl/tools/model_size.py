"""Parameter counts and memory needs, computed on the meta device (nothing is allocated).

Counts are grouped by the released checkpoint's key names, so `total` is the number of values in
`ema.safetensors`; the VAE (`ae.safetensors`) is listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from unimedvl.config import UnifiedConfig
from unimedvl.model.builder import build_model, build_vae

GROUPS = (
    ("token embeddings + lm_head", lambda k: k.startswith(("language_model.model.embed_tokens", "language_model.lm_head"))),
    ("LLM understanding expert", lambda k: k.startswith("language_model.") and "_moe_gen" not in k),
    ("LLM generation expert (*_moe_gen)", lambda k: k.startswith("language_model.") and "_moe_gen" in k),
    ("ViT (SigLIP NaViT)", lambda k: k.startswith("vit_model.")),
    ("connector", lambda k: k.startswith("connector.")),
    ("generation heads", lambda k: k.startswith(("time_embedder.", "vae2llm.", "llm2vae."))),
    ("sin-cos position tables", lambda k: k.endswith("pos_embed.pos_embed")),
)


@dataclass
class ModelSize:
    groups: dict[str, int]
    total: int
    vae: int
    kv_bytes_per_token_bf16: int
    modes: dict[str, int] = field(default_factory=dict)  # "understanding int8" -> bytes of weights loaded

    def lines(self) -> list[str]:
        out = [f"{name:<36} {count:>16,}  ({_human(count)})" for name, count in self.groups.items()]
        out.append(f"{'VAE (ae.safetensors, separate)':<36} {self.vae:>16,}  ({_human(self.vae)})")
        out.append(f"total: {_human(self.total)} parameters ({self.total:,}; model weights under the released key names, VAE excluded)")
        out.append(f"total with VAE: {_human(self.total + self.vae)} parameters")
        for label, nbytes in (("float32", 4), ("bfloat16", 2), ("float16", 2)):
            out.append(f"memory {label:<8}: {_gib(self.total * nbytes)} weights + {_gib(self.vae * nbytes)} VAE")
        for label, nbytes in self.modes.items():
            out.append(f"mode {label}: {_gib(nbytes)}")
        out.append(f"KV cache: {self.kv_bytes_per_token_bf16:,} bytes/token in bf16, "
                   f"{2 * self.kv_bytes_per_token_bf16:,} in fp32 (CPU)")
        return out


def _human(count: int) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.2f} M" if count >= 1e6 else f"{count / 1e3:.2f} K"


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def model_size(config: UnifiedConfig) -> ModelSize:
    model, vae = build_model(config), build_vae(config.vae)
    sizes = {k: v.numel() for k, v in model.state_dict().items()}
    groups: dict[str, int] = {}
    remaining = dict(sizes)
    for name, belongs in GROUPS:
        keys = [k for k in remaining if belongs(k)]
        groups[name] = sum(remaining.pop(k) for k in keys)
    if remaining:  # every key must land in a group, or the table would silently under-count
        raise AssertionError(f"ungrouped keys: {sorted(remaining)[:5]}")
    llm = config.llm
    kv = llm.num_hidden_layers * 2 * llm.num_key_value_heads * llm.head_dim * 2
    vae_count = sum(p.numel() for p in vae.state_dict().values())
    return ModelSize(groups=groups, total=sum(sizes.values()), vae=vae_count, kv_bytes_per_token_bf16=kv,
                     modes=mode_bytes(config, vae_count))


def mode_bytes(config: UnifiedConfig, vae_count: int) -> dict[str, int]:
    """Weight bytes each load mode and storage holds (`load_checkpoint(mode=..., quantize=..., dtype=...)`).

    int8 keeps the decoder's linear layers as int8 plus one fp32 scale per row, the rest in bf16;
    the VAE (full mode only) stays fp32 on CPU, so it counts 4 bytes a value in every row.
    """
    import re

    from unimedvl.checkpoint.folder import GENERATION_ONLY
    from unimedvl.model.layers import Int8Linear, quantize_linears

    model = build_model(config)
    quantize_linears(model.language_model, lambda name: True)
    scales = {f"language_model.{n}.weight": m.out_features for n, m in model.language_model.named_modules()
              if isinstance(m, Int8Linear)}
    out = {}
    for mode in ("full", "understanding"):
        kept = {k: v for k, v in model.state_dict().items()
                if mode == "full" or not any(re.search(p, k) for p in GENERATION_ONLY)}
        vae = vae_count * 4 if mode == "full" else 0
        for storage in ("float32", "bfloat16", "int8"):
            if storage == "int8":
                weights = sum(v.numel() + 4 * scales[k] if k in scales else 2 * v.numel() for k, v in kept.items())
            else:
                weights = sum(v.numel() for v in kept.values()) * (4 if storage == "float32" else 2)
            out[f"{mode} {storage}"] = weights + vae
    return out


def weights_file_summary(files: list) -> str:
    """One line about the tensors stored in safetensors files (read from their headers only)."""
    from safetensors import safe_open

    count, numel, dtypes = 0, 0, set()
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_slice(key)
                count += 1
                numel += int(torch.Size(tensor.get_shape()).numel())
                dtypes.add(tensor.get_dtype())
    names = ", ".join(p.name for p in files)
    return f"weights file: {names}: {count} tensors, {numel:,} values, dtype {'/'.join(sorted(dtypes))}"


def describe(config: UnifiedConfig, source: str, *, folder: Path | None = None) -> list[str]:
    """What `unimedvl info` prints: the architecture, counts per component, memory per dtype, the weights file."""
    from unimedvl.checkpoint.weights import weight_files
    from unimedvl.errors import UnimedvlError

    llm, vit = config.llm, config.vit
    lines = [f"config: {source}",
             f"LLM: {llm.num_hidden_layers} MoT layers, hidden {llm.hidden_size}, {llm.num_attention_heads} heads / "
             f"{llm.num_key_value_heads} KV heads, MLP {llm.intermediate_size}, vocab {llm.vocab_size}",
             f"ViT: {vit.num_hidden_layers} layers used, hidden {vit.hidden_size}, patch {vit.patch_size}; "
             f"VAE: ch {config.vae.ch} x {list(config.vae.ch_mult)}, z {config.vae.z_channels}",
             *model_size(config).lines()]
    if folder is not None:
        try:
            lines.append(weights_file_summary(weight_files(folder, "ema")))
        except UnimedvlError as exc:
            lines.append(f"weights file: {exc}")
        lines.append(sampling_summary(folder))
    return lines


def sampling_summary(folder: Path) -> str:
    """One line: the guidance the checkpoint recommends (sampling_config.json), or that it uses the defaults."""
    from unimedvl.errors import UnimedvlError
    from unimedvl.model.sampling import SamplingDefaults

    try:
        recommended = SamplingDefaults.from_checkpoint_dir(folder).to_json_dict()
    except UnimedvlError as exc:
        return f"sampling: {exc}"
    if not recommended:
        return "sampling: BAGEL's text-to-image and UniMedVL's editing defaults (no sampling_config.json)"
    parts = [f"{kind} " + ", ".join(f"{k} {v}" for k, v in values.items()) for kind, values in recommended.items()]
    return "sampling (sampling_config.json, over the defaults): " + "; ".join(parts)
