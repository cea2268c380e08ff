"""One decoding token through a decoder layer as two compiled graphs: before and after attention.

A one-token step through a layer is about thirty small operations (four RMSNorms, RoPE on q and k,
SiLU, residual adds) around seven matrix-vector products, and on a CPU each one's dispatch costs
microseconds. Compiled, the norms, RoPE and activations fuse into the products' loops, and each
product streams its weight once (widening bf16 weights and applying int8 scales in registers, as
`matvec`'s compiled loop does). Attention over the cache stays eager: its key length grows every
step. Measured on the small preset (2-core AMD EPYC, `bench/lm.py`): decoding 1.09-1.14x faster than
with eager layers in 7 of 8 runs, and 97 % of a step's time inside the compiled kernels.

Whether the compiled graphs beat the eager layer depends on the CPU (see `matvec`), so each layer
shape is timed where it runs: its first decoding steps alternate between the two (both give the
right result), and the faster serves the rest of the process. Layers whose MLP matrices are smaller
than `matvec.MIN_WEIGHTS` stay eager (a first call's compile would cost more than it saves).
`UNIMEDVL_FAST_DECODE` applies here too: `0` never compiles, `1` always does.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from unimedvl.model.layers import Int8DynamicLinear, Int8Linear, Linear, apply_rope, rms_norm
from unimedvl.model.matvec import (
    MATVEC,
    MIN_WEIGHTS,
    KernelTrial,
    MatvecKernels,
    raise_recompile_limit,
    run_trial,
    streaming_matvec,
)

if TYPE_CHECKING:
    from unimedvl.model.qwen2_mot import BlockInputs, MoTDecoderLayer

Weights = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # weight, bias, per-row scale


def before_attention(x: torch.Tensor, norm: torch.Tensor, q: Weights, k: Weights, v: Weights,
                     q_norm: torch.Tensor, k_norm: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     eps: float, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm, q/k/v, their head norms and RoPE for one row `[1, H]` -> q `[1, Hq, D]`, k, v `[1, Hkv, D]`."""
    h = rms_norm(x, norm, eps)
    d = cos.shape[-1]
    q_out = apply_rope(rms_norm(streaming_matvec(h, *q).view(1, heads, d), q_norm, eps), cos, sin)
    k_out = apply_rope(rms_norm(streaming_matvec(h, *k).view(1, kv_heads, d), k_norm, eps), cos, sin)
    return q_out, k_out, streaming_matvec(h, *v).view(1, kv_heads, d)


def after_attention(x: torch.Tensor, attended: torch.Tensor, o: Weights, norm: torch.Tensor, gate: Weights,
                    up: Weights, down: Weights, eps: float) -> torch.Tensor:
    """o_proj and the residual, RMSNorm, the SwiGLU MLP and its residual for one row `[1, H]`."""
    x = x + streaming_matvec(attended, *o)
    h = rms_norm(x, norm, eps)
    return x + streaming_matvec(F.silu(streaming_matvec(h, *gate)) * streaming_matvec(h, *up), *down)


def _weights(linear: torch.nn.Module) -> Weights | None:
    if isinstance(linear, Int8DynamicLinear):
        return None  # FBGEMM holds its weight: the eager layer calls it
    if isinstance(linear, Int8Linear):
        return linear.weight, linear.bias, linear.weight_scale
    if isinstance(linear, Linear):
        return linear.weight, linear.bias, None
    return None


def layer_weights(layer: "MoTDecoderLayer", gen: bool) -> dict[str, Weights] | None:
    """One expert's seven linear layers as (weight, bias, scale); None when one cannot be fused (FBGEMM int8)."""
    suffix = "_moe_gen" if gen else ""
    attention, mlp = layer.self_attn, layer.mlp_moe_gen if gen else layer.mlp
    found = {key: _weights(getattr(attention, f"{key}_proj{suffix}")) for key in ("q", "k", "v", "o")}
    found.update(gate=_weights(mlp.gate_proj), up=_weights(mlp.up_proj), down=_weights(mlp.down_proj))
    return None if any(w is None for w in found.values()) else found


class FusedDecoding:
    """Per layer shape, the eager layer or the two compiled graphs, whichever runs faster in this process."""

    def __init__(self, kernels: MatvecKernels = MATVEC) -> None:
        self.kernels = kernels  # shares its mode (UNIMEDVL_FAST_DECODE) and its "cannot compile here" verdict
        self.graphs: tuple[Callable, Callable] | None = None
        self.choice: dict[tuple, str] = {}
        self.trials: dict[tuple, KernelTrial] = {}
        self.off = False  # benchmarks switch it off to time the eager layer beside it

    def applies(self, x: torch.Tensor, inputs: "BlockInputs") -> bool:
        """One fp32 CPU row of a single-expert block over a plain cache, at inference."""
        return (not self.off and self.kernels.mode != "0" and not self.kernels.unavailable and x.dim() == 2 and x.shape[0] == 1
                and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
                and inputs.routing.single_expert is not None and inputs.cache is not None
                and inputs.attn_mask is None and inputs.row_caches is None and inputs.branch_caches is None)

    def __call__(self, layer: "MoTDecoderLayer", x: torch.Tensor, inputs: "BlockInputs",
                 eager: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        gen = bool(inputs.routing.single_expert)
        gate = getattr((layer.mlp_moe_gen if gen else layer.mlp).gate_proj, "weight", None)
        if gate is None or gate.numel() < MIN_WEIGHTS:  # small layers sit in cache: no gain (checked first: cheap)
            return eager(x)
        weights = layer_weights(layer, gen)
        if weights is None:
            return eager(x)
        key = (gen, *((tuple(w[0].shape), w[0].dtype, w[1] is None, w[2] is None) for w in weights.values()))

        def compiled() -> torch.Tensor:
            return self._compiled(layer, x, inputs, weights, eager)

        if self.kernels.mode == "1" or self.choice.get(key) == "compiled":
            return compiled()
        if key in self.choice:
            return eager(x)
        return run_trial(self.choice, self.trials, key, ("eager", "compiled"), lambda: eager(x), compiled)

    def _compiled(self, layer: "MoTDecoderLayer", x: torch.Tensor, inputs: "BlockInputs",
                  weights: dict[str, Weights], eager: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        suffix = "_moe_gen" if inputs.routing.single_expert else ""
        attention = layer.self_attn
        if self.graphs is None:
            raise_recompile_limit()
            self.graphs = (torch.compile(before_attention, dynamic=False),
                           torch.compile(after_attention, dynamic=False))
        before, after = self.graphs
        eps = layer.input_layernorm.eps
        try:
            q, k, v = before(x, getattr(layer, f"input_layernorm{suffix}").weight, weights["q"], weights["k"],
                             weights["v"], getattr(attention, f"q_norm{suffix}").weight,
                             getattr(attention, f"k_norm{suffix}").weight, inputs.cos, inputs.sin, eps,
                             attention.num_heads, attention.num_kv_heads)
        except Exception as exc:  # noqa: BLE001  (no C++ compiler, an unsupported platform: stay correct)
            return self._give_up(exc, eager, x)
        attended = attention.attend(q, k, v, inputs)  # its errors are the caller's, not the compiler's
        try:
            return after(x, attended, weights["o"], getattr(layer, f"post_attention_layernorm{suffix}").weight,
                         weights["gate"], weights["up"], weights["down"], eps)
        except Exception as exc:  # noqa: BLE001
            return self._give_up(exc, eager, x)  # the eager layer rewrites the same cache row: no harm

    def _give_up(self, exc: Exception, eager: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        self.kernels.unavailable = True
        warnings.warn(f"compiled decoding unavailable ({type(exc).__name__}); using the eager layer", stacklevel=4)
        return eager(x)

    def choices(self) -> dict[str, str]:
        """What each measured layer shape uses, e.g. `{"understanding 1024x2816 float32": "compiled"}`."""
        names = {}
        for key, kernel in self.choice.items():
            gate_shape, dtype = key[5][0], key[5][1]
            expert = "generation" if key[0] else "understanding"
            names[f"{expert} {gate_shape[1]}x{gate_shape[0]} {str(dtype).removeprefix('torch.')}"] = kernel
        return names


FUSED = FusedDecoding()
