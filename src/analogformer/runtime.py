"""Process-level CPU tuning for simulation runs.

An HWA training step creates dozens of activation-sized temporaries (25 MB each for a
MiniLM FFN layer at batch 32 × 128). glibc serves blocks above its mmap threshold with
fresh `mmap`s and returns them on free, so every such temporary pays ~6000 page faults
when first written — a third of the HWA step's overhead over a digital step.
`tune_allocator()` raises the threshold so those blocks come from (and return to) the
heap and are reused warm, like PyTorch's CUDA caching allocator does on GPUs. The cost:
freed memory stays with the process until it exits. The `analogformer` command calls it;
library users opt in.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's largest allowed mmap threshold on 64-bit
_applied = False


def tune_allocator(trim_threshold_bytes: int = 1 << 31) -> bool:
    """Keep blocks up to 32 MiB on the glibc heap and freed memory (up to
    `trim_threshold_bytes` of free heap top) with the process. Returns True when applied,
    False where it does not apply (not glibc, e.g. macOS / Windows / musl)."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = min(int(trim_threshold_bytes), 2 ** 31 - 1)
    _applied = mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, trim) == 1
    return _applied
