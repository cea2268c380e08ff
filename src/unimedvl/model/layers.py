"""Leaf layers whose parameters may be stored in a narrower dtype than the computation.

On a CPU without native bf16 a bf16 matmul is hundreds of times slower than fp32, so weights kept
in bf16 (half the memory) are cast to the activation dtype at use. When weights and activations
share a dtype (fp32 on CPU, bf16 on GPU) the casts are no-ops and cost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _as(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if param is None else param.to(dtype)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _as(self.weight, x.dtype), _as(self.bias, x.dtype))


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
