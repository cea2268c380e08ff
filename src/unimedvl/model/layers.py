"""Leaf layers whose parameters may be stored in a narrower dtype than the computation.

On a CPU without native bf16 a bf16 matmul is hundreds of times slower than fp32, so weights kept
in bf16 (half the memory) are cast to the activation dtype at use. When weights and activations
share a dtype (fp32 on CPU, bf16 on GPU) the casts are no-ops and cost nothing.
"""

from __future__ import annotations

import functools
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


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon Sapphire Rapids and later): bf16 matmuls run several times
    faster than fp32 there (6.2x measured on one such machine); most CPUs have none."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


@functools.cache
def _int8_dot_products_saturate() -> bool:
    # Without VNNI, FBGEMM's u8 x s8 pair sums go through int16 and can saturate: 7-bit activations avoid it.
    # Every CPU with AVX-512 bf16 or AMX has VNNI.
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return not (cpu_has_amx() or (bf16 is not None and bf16()))


class Int8DynamicLinear(Int8Linear):
    """Int8 weights *and* activations on CPU: FBGEMM's dynamic quantized linear (VNNI / AVX2 int8 kernels).

    The weights keep :class:`Int8Linear`'s per-row scales; each call quantizes its input with one scale
    for the block, multiplies in int8 with int32 sums and rescales to fp32. On one AVX-512 machine that
    ran the small preset's matrices 2-6x faster than fp32 BLAS (one row or 64), at ~1.1 % relative error
    per layer against weight-only int8's 0.8 %. `pack()`, once weights and bias are loaded, hands the
    weight to FBGEMM and frees the plain copy.
    """

    _packed: object | None = None

    def pack(self) -> None:
        import warnings

        from unimedvl.errors import ConfigError

        zeros = torch.zeros(self.out_features, dtype=torch.long)
        bias = None if self.bias is None else self.bias.detach().float().cpu()
        try:
            with warnings.catch_warnings():  # torch deprecates quantized tensors (pytorch#184982); 2.13 has them
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                weight = torch._make_per_channel_quantized_tensor(self.weight.cpu(), self.weight_scale.double().cpu(),
                                                                  zeros, 0)
                self._packed = torch.ops.quantized.linear_prepack(weight, bias)
        except (AttributeError, RuntimeError) as exc:
            raise ConfigError(f"int8-dynamic needs torch's FBGEMM quantized ops, which this torch lacks ({exc}); "
                              "use quantize='int8'") from None
        self.weight = torch.empty(0, dtype=torch.int8)  # FBGEMM holds the only copy now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:  # not packed yet (still loading): the weight-only path
            return super().forward(x)
        saturate = _int8_dot_products_saturate()
        if x.dim() == 2 and x.dtype == torch.float32:  # decoding and blocks: no reshapes, no casts
            return torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed, saturate)
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float().contiguous()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, saturate)
        return out.view(*shape[:-1], self.out_features).to(x.dtype)


def pack_int8_dynamic(module: nn.Module) -> int:
    """`pack()` every :class:`Int8DynamicLinear` under `module` (after loading); returns how many."""
    # Modules left on the meta device (an understanding-only load's generation expert) are never called.
    layers = [m for m in module.modules() if isinstance(m, Int8DynamicLinear) and not m.weight.is_meta]
    for layer in layers:
        layer.pack()
    return len(layers)


def quantize_linears(module: nn.Module, select: Callable[[str], bool], kind: type[Int8Linear] = Int8Linear) -> int:
    """Replace every :class:`Linear` whose qualified name `select` accepts by `kind` (an :class:`Int8Linear`,
    weight-only, or :class:`Int8DynamicLinear`); returns how many."""
    count = 0
    for name, child in list(module.named_modules()):
        for attr, leaf in list(child.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(leaf, Linear) and select(full):
                setattr(child, attr, kind(leaf.in_features, leaf.out_features, leaf.bias is not None,
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
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2 RMSNorm as a function (also traced into decoding's compiled layer graphs)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(dtype) * h.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on `[L, heads, D]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Embedding(nn.Embedding):
    """Token table; rows come out in `dtype` (the compute dtype), whatever the storage dtype."""

    def forward(self, ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:  # type: ignore[override]
        out = F.embedding(ids, self.weight)
        return out if dtype is None else out.to(dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
