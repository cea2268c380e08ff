"""One row times a weight matrix (decoding): BLAS or a compiled loop, whichever this machine runs faster.

Decoding multiplies one row by every weight matrix and is bound by reading the weights. Which kernel
reads them faster depends on the CPU. On one machine here BLAS's matrix-vector path read fp32 weights
at about half the bandwidth while a compiled multiply-and-sum streamed them at full speed (and widened
bf16 / int8 weights in registers instead of into a temporary copy); on another (AVX-512, a 480 MB L3)
BLAS ran every decoder shape 1.4-1.7x faster than the compiled loop. So each weight shape and dtype is
timed where it is used: its first calls alternate between the two kernels on the real weights (every
call returns the right result), and the faster one serves the rest of the process. A weight stored
narrower than the computation (bf16 or int8 under fp32) always takes the compiled loop: BLAS would first
widen the whole matrix into a temporary (the 14B lm_head: 2.2 GB, which raised that run's peak memory by 1.29 GiB).

`UNIMEDVL_FAST_DECODE`: `auto` (default) measures; `1` always uses the compiled loop; `0` never does.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

MIN_WEIGHTS = 1 << 20  # smaller matrices sit in cache, where BLAS beats a compiled call's overhead
TRIALS = 4  # timed calls per kernel before a shape's choice is made
MARGIN = 0.97  # the compiled loop must be at least 3 % faster to replace BLAS (the plainer, exact-as-ever path)

Key = tuple[int, int, torch.dtype, bool, bool]


def blas_matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                scale: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight.T (* scale) + bias` through BLAS (a narrower weight is widened first)."""
    if scale is None:
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    out = F.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)
    return out if bias is None else out + bias.to(x.dtype)


def streaming_matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      scale: torch.Tensor | None) -> torch.Tensor:
    y = (x[:, None, :] * weight.to(x.dtype)).sum(-1)
    if scale is not None:
        y = y * scale
    return y if bias is None else y + bias.to(x.dtype)


def raise_recompile_limit() -> None:
    """One compiled kernel per weight shape and dtype: a model has a handful, several models a few more."""
    from torch import _dynamo

    limit = "recompile_limit" if hasattr(_dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(_dynamo.config, limit, max(getattr(_dynamo.config, limit), 64))


class KernelTrial:
    """Running totals of one shape's timed calls for a plain kernel and a compiled one (named in that order)."""

    def __init__(self, names: tuple[str, str] = ("blas", "compiled")) -> None:
        self.plain, self.fast = names
        self.seconds = {name: 0.0 for name in names}
        self.calls = {name: 0 for name in names}
        self.warmed = False  # the compiled kernel's first call compiles: never timed

    def next_kernel(self) -> str:
        return self.fast if self.calls[self.fast] < self.calls[self.plain] else self.plain

    def record(self, kernel: str, seconds: float) -> None:
        self.seconds[kernel] += seconds
        self.calls[kernel] += 1

    def decided(self) -> str | None:
        if min(self.calls.values()) < TRIALS:
            return None
        return self.fast if self.seconds[self.fast] < MARGIN * self.seconds[self.plain] else self.plain


def run_trial(choice: dict, trials: dict, key: object, names: tuple[str, str], plain: Callable[[], torch.Tensor],
              fast: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One call of a shape still being timed: the first runs `fast` (it compiles, untimed), then the two
    alternate; once each has run `TRIALS` times the faster is stored in `choice[key]`."""
    trial = trials.setdefault(key, KernelTrial(names))
    if not trial.warmed:
        trial.warmed = True
        return fast()
    kernel = trial.next_kernel()
    start = time.perf_counter()
    out = fast() if kernel == trial.fast else plain()
    trial.record(kernel, time.perf_counter() - start)
    decision = trial.decided()
    if decision is not None:
        choice[key] = decision
        del trials[key]
    return out


class MatvecKernels:
    """The per-shape choice between BLAS and the compiled loop for one process."""

    def __init__(self, mode: str | None = None) -> None:
        mode = (mode or os.environ.get("UNIMEDVL_FAST_DECODE", "auto")).strip().lower()
        if mode not in {"auto", "0", "1"}:
            raise ValueError(f"UNIMEDVL_FAST_DECODE must be auto, 0 or 1, not {mode!r}")
        self.mode = mode
        self.compiled = None
        self.unavailable = mode == "0"
        self.choice: dict[Key, str] = {}
        self.trials: dict[Key, KernelTrial] = {}

    def applies(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        return (x.dim() == 2 and x.shape[0] == 1 and x.device.type == "cpu" and not torch.is_grad_enabled()
                and x.dtype == torch.float32 and weight.numel() >= MIN_WEIGHTS)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.unavailable or not self.applies(x, weight):
            return blas_matvec(x, weight, bias, scale)
        if self.mode == "1" or weight.dtype != x.dtype:  # narrower: BLAS would need a widened copy of the matrix
            return self._compiled(x, weight, bias, scale)
        key: Key = (weight.shape[0], weight.shape[1], weight.dtype, bias is None, scale is None)
        kernel = self.choice.get(key)
        if kernel == "blas":
            return blas_matvec(x, weight, bias, scale)
        if kernel == "compiled":
            return self._compiled(x, weight, bias, scale)
        return run_trial(self.choice, self.trials, key, ("blas", "compiled"), lambda: blas_matvec(x, weight, bias, scale),
                         lambda: self._compiled(x, weight, bias, scale))

    def _compiled(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  scale: torch.Tensor | None) -> torch.Tensor:
        if self.compiled is None:
            raise_recompile_limit()
            self.compiled = torch.compile(streaming_matvec, dynamic=False)
        try:
            return self.compiled(x, weight, bias, scale)
        except Exception as exc:  # noqa: BLE001  (no C++ compiler, an unsupported platform: stay correct)
            self.unavailable = True
            warnings.warn(f"compiled decoding unavailable ({type(exc).__name__}); using BLAS", stacklevel=3)
            return blas_matvec(x, weight, bias, scale)

    def choices(self) -> dict[str, str]:
        """What each measured shape uses, e.g. `{"152064x1024 float32": "blas"}` (for benchmarks)."""
        names = {}
        for (rows, cols, dtype, _, _), kernel in self.choice.items():
            names[f"{rows}x{cols} {str(dtype).removeprefix('torch.')}"] = kernel
        return names


MATVEC = MatvecKernels()


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           scale: torch.Tensor | None = None) -> torch.Tensor:
    """`x [rows, K] @ weight[N, K].T (* scale) + bias`: one-row CPU calls on large weights take the measured kernel."""
    return MATVEC(x, weight, bias, scale)
