"""Leaf layers whose parameters may be stored in a narrower dtype than the computation.

On a CPU without native bf16 a bf16 matmul is hundreds of times slower than fp32, so weights kept
in bf16 (half the memory) are cast to the activation dtype at use. When weights and activations
share a dtype (fp32 on CPU, bf16 on GPU) the casts are no-ops and cost nothing.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unimedvl.model.matvec import matvec


def _as(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if param is None else param.to(dtype)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return matvec(x, self.weight, self.bias)  # one decoding row: the kernel measured fastest here


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
        return matvec(x, self.weight, self.bias, self.weight_scale)


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
