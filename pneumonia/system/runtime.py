"""What this machine offers, and process-wide settings that make training faster."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pneumonia.errors import InputValueError

log = logging.getLogger(__name__)

# CPU flags of native bf16 arithmetic. Without them PyTorch emulates bf16 on the CPU, and bf16
# autocast made ResNet training about 13x slower than fp32 on an AVX2-only AMD EPYC (Zen 3).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PROBE_SPEEDUP = 1.2  # bf16 must beat fp32 by this much in the probe to be chosen
# On a GPU with bf16, a probe of the training step decides: a launch-bound step (small batches
# on a large GPU) ran slower in bf16-mixed than in fp32 on an H200 (benchmarks/RESULTS.md, G).
GPU_STEP_SPEEDUP = 1.05


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


def resolve_device(accelerator: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``gpu``/``cuda`` and ``cpu`` are taken literally."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise InputValueError(
                "accelerator=gpu but no CUDA device is visible; use accelerator=cpu"
            )
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise InputValueError(f"accelerator={accelerator!r}: use auto, cpu or gpu")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (``/proc/cpuinfo``), or ``None`` where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


@functools.cache
def bf16_matmul_speedup(size: int = 1024, repeats: int = 5) -> float:
    """fp32 time / bf16 time of a square matmul on the CPU: a probe of about 0.2 s, once.

    A first look at a small size screens out emulated bf16, which ran a 1024 matmul 100x
    slower than fp32 (14 s for the whole probe) on an Intel Xeon capped to AVX2: where bf16
    is clearly slower there, that ratio is the answer.
    """

    def best(dtype: torch.dtype, n: int, times: int) -> float:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        elapsed = []
        for _ in range(times):
            start = time.perf_counter()
            a @ b
            elapsed.append(time.perf_counter() - start)
        return min(elapsed)

    screen = best(torch.float32, 256, 3) / best(torch.bfloat16, 256, 3)
    if screen < 0.5:
        return screen
    return best(torch.float32, size, repeats) / best(torch.bfloat16, size, repeats)


def cpu_bf16_pays_off() -> tuple[bool, str]:
    """Whether bf16 autocast is faster than fp32 on this CPU, and why.

    Without a native-bf16 flag it is not (bf16 is emulated). With one it usually is, but not
    always: an Intel Xeon with avx512_bf16 (no AMX) ran bf16 matmuls at half the fp32 speed and
    ResNet50 training at 0.7x. So a short matmul probe has the last word, and decides alone
    where the flags cannot be read.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and isa not in ("ALL", "DEFAULT") and not any(k in isa for k in ("BF16", "AMX")):
        return False, f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN from the CPU's native bf16"
    flags = cpu_flags()
    native = [f for f in NATIVE_BF16_FLAGS if flags is not None and f in flags]
    if flags is not None and not native:
        return False, (
            "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), so bf16 would be "
            "emulated: about 13x slower than fp32 on an AVX2-only CPU"
        )
    speedup = bf16_matmul_speedup()
    has = f"this CPU has {', '.join(native)}" if native else "CPU flags unreadable"
    if speedup >= PROBE_SPEEDUP:
        return True, f"{has} and a matmul probe ran bf16 at {speedup:.2f}x fp32"
    return False, f"{has}, but a matmul probe ran bf16 at only {speedup:.2f}x fp32"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # one of Lightning's: "bf16-mixed", "16-mixed", "32-true", ...
    reason: str


def resolve_precision(
    requested: str | int,
    device: torch.device | str,
    step_probe: Callable[[], float] | None = None,
) -> PrecisionChoice:
    """``auto`` -> the fastest safe precision for ``device``; anything else is kept as asked.

    ``auto`` on a CUDA GPU with bf16: bf16-mixed, unless ``step_probe`` (the training step's
    fp32 time over its bf16-mixed time, :func:`step_speedup`) shows bf16 no faster, then
    32-true; 16-mixed on GPUs without bf16. On CPUs bf16-mixed where it pays off
    (:func:`cpu_bf16_pays_off`: a native-bf16 flag and a probe that shows bf16 faster) and
    32-true otherwise. An explicit bf16 where it does not pay off warns.
    """
    requested = str(requested)
    kind = torch.device(device).type
    if requested == "auto":
        if kind == "cuda":
            if not torch.cuda.is_bf16_supported():
                return PrecisionChoice("16-mixed", "this GPU has no bf16: fp16 with loss scaling")
            if step_probe is None:
                return PrecisionChoice("bf16-mixed", "this GPU supports bf16")
            speedup = step_probe()
            verdict = f"a probe of the training step ran bf16-mixed at {speedup:.2f}x fp32"
            if speedup >= GPU_STEP_SPEEDUP:
                return PrecisionChoice("bf16-mixed", f"this GPU supports bf16 and {verdict}")
            return PrecisionChoice("32-true", f"this GPU supports bf16, but {verdict}")
        if kind == "cpu":
            pays, why = cpu_bf16_pays_off()
            return PrecisionChoice("bf16-mixed" if pays else "32-true", why)
        return PrecisionChoice("32-true", f"no mixed precision chosen for {kind}")
    if kind == "cpu" and requested.startswith("bf16"):
        pays, why = cpu_bf16_pays_off()
        if not pays:
            warnings.warn(
                f"precision={requested} on this CPU is the slow choice: {why}. "
                "precision=auto picks 32-true here.",
                stacklevel=2,
            )
    return PrecisionChoice(requested, "set explicitly")


def step_speedup(
    model: torch.nn.Module, batch_size: int, size: int, device: torch.device, repeats: int = 3
) -> float:
    """The training step's fp32 time over its bf16-autocast time: forward and backward of a
    (batch_size, 3, size, size) batch through a copy of ``model`` on ``device`` (the model's
    weights and statistics are not touched), best of ``repeats`` after two warm-ups each."""
    probe = copy.deepcopy(model).to(device).train()
    images = torch.randn(batch_size, 3, size, size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 2):
            probe.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = probe(images)
            out.float().sum().backward()
            sync()
            times.append(time.perf_counter() - start)
        return min(times[2:])

    return best(False) / best(True)


def tune_malloc() -> bool:
    """Stop glibc malloc from returning large tensor buffers to the OS after every step.

    By default glibc serves allocations above a (dynamic) threshold with fresh mmaps and trims
    the heap eagerly, so each training step page-faults its activations in again: 1.2-1.9x
    slower CPU training on an earlier stack (no difference on machines A and B of
    benchmarks/RESULTS.md). Equivalent to MALLOC_MMAP_THRESHOLD_=33554432
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


# Warnings of the libraries under this project that tell its users nothing, each with why.
QUIET_WARNINGS = (
    # Lightning's own use of torch's pytree API (pytorch_lightning/utilities/_pytree.py).
    r".*isinstance\(treespec, LeafSpec\).*",
    # Lightning's model summary estimates the size in MB at 32 bits under bf16, and says so.
    r"Precision .* is not supported by the model summary.*",
    # num_workers=0 is this project's deliberate default on small CPU machines (loader_workers).
    r".*does not have many workers.*",
    # Lightning's MLFlowLogger drops "@" from every such metric name, at every log call (the
    # README says so once: test/f1@0.5 is test/f10.5 in MLflow).
    r"MLFlow only allows .* special characters in metric name.*",
)


class _NoAdverts(logging.Filter):
    """Lightning logs a tip for its cloud logger at every fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_libraries() -> None:
    """Silence :data:`QUIET_WARNINGS` and Lightning's advertisement, once per process."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdverts())


def configure_torch() -> None:
    """TF32 matmuls on Ampere+ GPUs (bf16/fp32 training loses nothing measurable)."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
