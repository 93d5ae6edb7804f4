"""What this machine offers, and process-wide settings that make training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """CPU cores this process may run on (a CPU-limited container's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_threads() -> int:
    """Threads for decoding images: Pillow releases the GIL, so they scale across cores."""
    return min(8, usable_cpus())


def loader_workers(on_gpu: bool) -> int:
    """DataLoader workers. On small CPU machines workers fight the compute threads, so none."""
    cores = usable_cpus()
    if on_gpu:
        return min(8, max(1, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """Stop glibc malloc from returning large tensor buffers to the OS after every step.

    By default glibc serves allocations above a (dynamic) threshold with fresh mmaps and trims
    the heap eagerly, so each training step page-faults its activations in again; DESIGN.md
    measured 1.2-1.9x slower CPU training from it. Equivalent to MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=<huge> MALLOC_TOP_PAD_=1073741824. PNEUMONIA_MALLOC_TUNING=0 turns
    it off. Returns whether it applied.
    """
    if os.environ.get("PNEUMONIA_MALLOC_TUNING") == "0":  # opt out (benchmarks compare both)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
            and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
            and libc.mallopt(_M_TOP_PAD, 1024 * 1024 * 1024)
        )
    except (OSError, AttributeError):
        return False
    return bool(ok)


def configure_torch() -> None:
    """TF32 matmuls on Ampere+ GPUs (bf16/fp32 training loses nothing measurable)."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
