"""Leaf layers whose parameters may be stored in a narrower dtype than the computation.

On a CPU without native bf16 a bf16 matmul is hundreds of times slower than fp32, so weights kept
in bf16 (half the memory) are cast to the activation dtype at use. When weights and activations
share a dtype (fp32 on CPU, bf16 on GPU) the casts are no-ops and cost nothing.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _as(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if param is None else param.to(dtype)


# ---------------------------------------------------------------- one row times a matrix (decoding)
# Decoding multiplies one row by every weight matrix: it is bound by reading the weights. BLAS's
# matrix-vector path reads fp32 weights at about half this CPU's bandwidth and a bf16 or int8 weight
# must first be widened into a temporary copy; a compiled multiply-and-sum streams the weight once,
# widening it in registers (measured in bench/lm.py). UNIMEDVL_FAST_DECODE=0 turns it off.
MATVEC_MIN_WEIGHTS = 1 << 20  # smaller matrices sit in cache, where BLAS is faster than a compiled call's overhead
_matvec_state: dict[str, object] = {"fn": None, "failed": os.environ.get("UNIMEDVL_FAST_DECODE", "1") == "0"}


def _matvec_eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  scale: torch.Tensor | None) -> torch.Tensor:
    y = (x[:, None, :] * weight.to(x.dtype)).sum(-1)
    if scale is not None:
        y = y * scale
    return y if bias is None else y + bias.to(x.dtype)


def fast_matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor | None:
    """`x [1, K] @ weight[N, K].T (* scale) + bias` as one compiled streaming loop, or None when not applicable."""
    if (_matvec_state["failed"] or x.dim() != 2 or x.shape[0] != 1 or x.device.type != "cpu"
            or torch.is_grad_enabled() or x.dtype != torch.float32 or weight.numel() < MATVEC_MIN_WEIGHTS):
        return None
    if _matvec_state["fn"] is None:
        from torch import _dynamo

        # One compiled kernel per weight shape and dtype: a model has a handful, several models a few more.
        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
        _matvec_state["fn"] = torch.compile(_matvec_eager, dynamic=False)
    try:
        return _matvec_state["fn"](x, weight, bias, scale)  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001  (no C++ compiler, an unsupported platform: stay correct, go slower)
        import warnings

        _matvec_state["failed"] = True
        warnings.warn(f"compiled decoding unavailable ({type(exc).__name__}); using the slower eager path")
        return None


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = fast_matvec(x, self.weight, self.bias)
        if fast is not None:
            return fast
        return F.linear(x, _as(self.weight, x.dtype), _as(self.bias, x.dtype))


class Int8Linear(nn.Module):
    """Weight-only int8 linear layer: one symmetric scale per output row, computed when the weight is loaded.

    Built in place of a :class:`Linear` (see :func:`quantize_linears`); `load_weight` takes the file's
    float tensor (bf16 or fp32, memory-mapped) and quantizes it in row chunks, so the float copy is
    never whole in memory. Decoding streams the int8 weight (a quarter of fp32's bytes); longer blocks
    widen it per call.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, device: torch.device | str | None = None
                 ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, device=device), persistent=False)
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None

    @torch.no_grad()
    def load_weight(self, weight: torch.Tensor | Callable[[int, int], torch.Tensor], device: torch.device,
                    rows_per_chunk: int = 4096) -> bool:
        """Quantize `weight` (a float tensor, or `rows(start, stop)` giving its rows) chunk by chunk.

        Returns whether every value was finite (checked per chunk: no full-size temporary).
        """
        rows_of = weight if callable(weight) else (lambda start, stop: weight[start:stop])
        quantized = torch.empty(self.out_features, self.in_features, dtype=torch.int8, device=device)
        scale = torch.empty(self.out_features, dtype=torch.float32, device=device)
        finite = True
        for start in range(0, self.out_features, rows_per_chunk):
            stop = min(start + rows_per_chunk, self.out_features)
            rows = rows_of(start, stop).to(device=device, dtype=torch.float32)
            finite = finite and bool(torch.isfinite(rows).all())
            row_scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            quantized[start:stop] = torch.round(rows / row_scale[:, None]).clamp_(-127, 127).to(torch.int8)
            scale[start:stop] = row_scale
        self.weight, self.weight_scale = quantized, scale
        return finite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = fast_matvec(x, self.weight, self.bias, self.weight_scale)
        if fast is not None:
            return fast
        out = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


def quantize_linears(module: nn.Module, select: Callable[[str], bool]) -> int:
    """Replace every :class:`Linear` whose qualified name `select` accepts by an :class:`Int8Linear`; returns how many."""
    count = 0
    for name, child in list(module.named_modules()):
        for attr, leaf in list(child.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(leaf, Linear) and select(full):
                setattr(child, attr, Int8Linear(leaf.in_features, leaf.out_features, leaf.bias is not None,
                                                device=leaf.weight.device))
                count += 1
    return count


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _as(self.weight, x.dtype), _as(self.bias, x.dtype))


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, _as(self.weight, x.dtype), _as(self.bias, x.dtype), self.eps)


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, _as(self.weight, x.dtype), _as(self.bias, x.dtype), self.eps)


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: normalise in fp32, scale by the weight in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(dtype) * h.to(dtype)


class Embedding(nn.Embedding):
    """Token table; rows come out in `dtype` (the compute dtype), whatever the storage dtype."""

    def forward(self, ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:  # type: ignore[override]
        out = F.embedding(ids, self.weight)
        return out if dtype is None else out.to(dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
