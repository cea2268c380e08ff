"""Decoding's attention on CPU (one query row over a long KV cache): a built kernel or SDPA, whichever runs faster.

At long contexts a decoding step's attention is a real share of its time: on the small preset at 4,096
keys SDPA took about a sixth of each token, far slower than reading the cache should take (see
`csrc/decode_attention.cpp`). The kernel there reads each key and value row once for all the query
heads that share it. It is C++ built once per machine by `torch.utils.cpp_extension` (the compiler
torch.compile already needs; about 35 s, cached under torch's extensions folder), and only when a
decoding step first meets `MIN_KEYS` keys. As with `matvec`, the two kernels are then timed in turn on
the first calls of each head layout and key-count range (both give the right result, within 2e-6 of
each other), and the faster serves the rest of the process. If it cannot be built, SDPA serves, with
one warning.

`UNIMEDVL_FAST_DECODE` applies here too: `0` never builds it, `1` always uses it (from `MIN_KEYS` on).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from unimedvl.model.matvec import MATVEC, KernelTrial, MatvecKernels, run_trial

SOURCE = Path(__file__).resolve().parent / "csrc" / "decode_attention.cpp"
MIN_KEYS = 1024  # below this the attention is a small share of a step: not worth a build
STALE_LOCK_S = 600.0  # a build lock older than this was left by a killed build
HEAD_DIMS = (16, 32, 48, 64, 80, 96, 128, 256)  # compiled in (csrc/decode_attention.cpp)
# Vector flags per torch's own CPU capability reading: the build is named after it, so one machine's
# build is never loaded on a CPU without those instructions.
ARCH_FLAGS = {"AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"],
              "AVX2": ["-mavx2", "-mfma"]}


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`q [Hq, D]` over `k, v [Hkv, T, D]` -> `[Hq, D]` through torch's SDPA (grouped heads expanded by it)."""
    out = F.scaled_dot_product_attention(q[None, :, None], k[None], v[None], enable_gqa=q.shape[0] != k.shape[0])
    return out[0, :, 0]


def build_kernel(verbose: bool = False):  # noqa: ANN201  (a compiled extension module)
    """Build (or load the cached build of) the C++ kernel for this CPU."""
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ARCH_FLAGS.get(capability, [])
    name = f"unimedvl_decode_attention_{capability.lower()}"
    _clear_stale_lock(name)
    # -ffast-math lets GCC call glibc's vector exp; -fopenmp-simd honours the kernel's `omp simd` loops.
    return load(name=name, sources=[str(SOURCE)], extra_cflags=["-O3", "-ffast-math", "-fopenmp-simd", *flags],
                verbose=verbose)


def _clear_stale_lock(name: str, older_than_s: float = STALE_LOCK_S) -> None:
    """torch's builder waits, without end, while its folder's `lock` file exists; a build killed midway
    (Ctrl-C, a stopped server) leaves one behind. A build takes about 35 s, so an old lock is stale."""
    from torch.utils import cpp_extension

    try:
        lock = Path(cpp_extension._get_build_directory(name, verbose=False)) / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > older_than_s:
            lock.unlink()
    except OSError:
        pass  # unreadable or already gone: torch's own handling applies


def _put_ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the pinned wheel's lives in its package (a venv not activated)."""
    try:
        import ninja
    except ImportError:
        return
    folder = str(getattr(ninja, "BIN_DIR", ""))
    if folder and folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


class DecodeAttention:
    """The per-layout choice between SDPA and the built kernel for one process."""

    def __init__(self, kernels: MatvecKernels = MATVEC, builder: Callable[[], object] = build_kernel) -> None:
        self.kernels = kernels  # shares its mode (UNIMEDVL_FAST_DECODE)
        self.builder = builder
        self.module: object | None = None
        self.unavailable = False  # the build failed here: SDPA from now on
        self.off = False  # benchmarks switch it off to time SDPA beside it
        self.choice: dict[tuple, str] = {}
        self.trials: dict[tuple, KernelTrial] = {}
        self._lock = threading.Lock()

    def applies(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """One fp32 CPU query row per head over at least `MIN_KEYS` cached keys, at inference."""
        return (not self.off and not self.unavailable and self.kernels.mode != "0" and q.dim() == 2
                and q.device.type == "cpu" and q.dtype == torch.float32 and k.dtype == torch.float32
                and k.dim() == 3 and k.shape[1] >= MIN_KEYS and q.shape[1] in HEAD_DIMS and k.stride(2) == 1
                and q.shape[0] % k.shape[0] == 0 and not torch.is_grad_enabled())

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`q [Hq, D]` (one row per head, unscaled) over `k, v [Hkv, T, D]` -> `[Hq, D]`."""
        return self.run(q, k, v) if self.applies(q, k) else sdpa_decode(q, k, v)

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """As `__call__`, for a caller that has just checked `applies(q, k)` (decoding's hot path)."""
        if v.stride(2) != 1:
            return sdpa_decode(q, k, v)
        if self.kernels.mode == "1":
            return self._kernel(q, k, v)
        key = (q.shape[0], k.shape[0], q.shape[1], k.shape[1].bit_length())  # heads, kv heads, dim, key range
        kernel = self.choice.get(key)
        if kernel == "sdpa":
            return sdpa_decode(q, k, v)
        if kernel == "kernel":
            return self._kernel(q, k, v)
        return run_trial(self.choice, self.trials, key, ("sdpa", "kernel"), lambda: sdpa_decode(q, k, v),
                         lambda: self._kernel(q, k, v))

    def ensure_built(self) -> bool:
        """Build the kernel now unless it is built or switched off; whether it can serve."""
        if self.module is None and self.kernels.mode != "0":
            with self._lock:
                if self.module is None and not self.unavailable:
                    self._build()
        return self.module is not None

    def _kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.ensure_built():
            return sdpa_decode(q, k, v)
        return self.module.decode_attention(q.contiguous(), k, v, q.shape[1] ** -0.5)  # type: ignore[attr-defined]

    def _build(self) -> None:
        print("unimedvl: loading the CPU decoding-attention kernel (built once per machine, about 35 s)",
              file=sys.stderr, flush=True)
        try:
            self.module = self.builder()
        except Exception as exc:  # noqa: BLE001  (no compiler, no headers, an unsupported platform: stay correct)
            self.unavailable = True
            warnings.warn(f"decoding-attention kernel unavailable ({type(exc).__name__}: {str(exc)[:200]}); "
                          "using SDPA", stacklevel=4)

    def choices(self) -> dict[str, str]:
        """What each measured layout uses, e.g. `{"16/4 heads of 64, 4096+ keys": "kernel"}` (for benchmarks)."""
        return {f"{hq}/{hkv} heads of {d}, {1 << (bits - 1)}+ keys": kernel
                for (hq, hkv, d, bits), kernel in self.choice.items()}


DECODE_ATTENTION = DecodeAttention()
