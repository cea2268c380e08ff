"""Heads that join the towers to the LLM (DiT / BAGEL `modeling_utils`).

* :class:`MLPconnector`: ViT features `[N, Dv]` -> LLM width `[N, H]` (fc1, gelu-tanh, fc2).
* :class:`TimestepEmbedder`: flow time t in [0, 1] -> `[N, H]` via a 256-d sinusoid [cos | sin].
* :class:`PositionEmbedding`: a fixed 2-D sin-cos table `[S*S, H]`, indexed by `row*S + col`.
  It is a buffer under the released key name (`*.pos_embed`; saved in the checkpoint, bf16-rounded
  there), so it is loaded, never trained; :func:`sincos_2d_table` rebuilds it when a checkpoint lacks it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unimedvl.model.layers import Linear, gelu_tanh


class MLPconnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, out_dim)
        self.fc2 = Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """`[N]` -> `[N, dim]` = [cos(t f), sin(t f)], f = exp(-ln(max_period) * i / (dim/2)). t is not scaled."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, hidden), nn.SiLU(), Linear(hidden, hidden))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t, self.freq_dim).to(dtype))


def sincos_2d_table(dim: int, grid: int) -> torch.Tensor:
    """DiT/MAE 2-D table `[grid*grid, dim]`: first half encodes the column, second half the row,
    each half laid out [sin(p w), cos(p w)] with w = 1 / 10000^(i / (dim/4)). Computed in float64."""
    if dim % 4:
        raise ValueError("sin-cos table width must be divisible by 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_d(cols), one_d(rows)], dim=1).float()


class PositionEmbedding(nn.Module):
    def __init__(self, max_per_side: int, hidden: int) -> None:
        super().__init__()
        self.max_per_side = max_per_side
        self.register_buffer("pos_embed", torch.zeros(max_per_side * max_per_side, hidden))

    def reset_table(self) -> None:
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_table(self.pos_embed.shape[1], self.max_per_side))

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.embedding(position_ids, self.pos_embed).to(dtype)
