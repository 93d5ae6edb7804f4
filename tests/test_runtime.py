"""What the machine offers: threads and workers for its CPUs, and the precision it runs fast."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

from pneumonia.system import runtime


@pytest.fixture
def two_of_sixty_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-limited container on a big host: 2 usable cores of 64."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


def test_a_cpu_limited_container_counts_its_own_cores(two_of_sixty_four: None) -> None:
    assert runtime.usable_cpus() == 2
    assert runtime.decode_threads() == 2
    assert runtime.loader_workers(on_gpu=False) == 0  # workers would fight the compute threads
    assert runtime.loader_workers(on_gpu=True) == 1


def test_big_machines_get_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert runtime.decode_threads() == 8
    assert runtime.loader_workers(on_gpu=False) == 4
    assert runtime.loader_workers(on_gpu=True) == 8


# ----------------------------------------------------------------------------- precision
@pytest.fixture
def cpu_with(monkeypatch: pytest.MonkeyPatch):
    """Fake the CPU's flags (None: unreadable, as on macOS) and the matmul probe."""

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def fake(flags: set[str] | None, probe_speedup: float = 1.0) -> None:
        monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
        monkeypatch.setattr(runtime, "bf16_matmul_speedup", lambda: probe_speedup)

    return fake


@pytest.mark.parametrize(
    ("flags", "probe", "expected", "why"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, 2.2, "bf16-mixed", "has avx512_bf16 and"),
        ({"avx2", "amx_bf16", "amx_tile"}, 4.0, "bf16-mixed", "has amx_bf16 and"),
        # the flag alone is not enough: an Intel Xeon with avx512_bf16 ran bf16 at 0.5x fp32
        ({"avx2", "avx512f", "avx512_bf16"}, 0.5, "32-true", "only 0.50x"),
        ({"avx2", "fma"}, 9.9, "32-true", "no native bf16"),  # AVX2 only: no probe needed
        (None, 2.1, "bf16-mixed", "flags unreadable"),  # the probe decides alone
        (None, 0.1, "32-true", "flags unreadable"),
    ],
)
def test_auto_on_a_cpu_picks_bf16_only_where_it_pays_off(
    cpu_with, flags: set[str] | None, probe: float, expected: str, why: str
) -> None:
    cpu_with(flags, probe)
    choice = runtime.resolve_precision("auto", "cpu")
    assert choice.precision == expected
    assert why in choice.reason


def test_an_isa_capped_below_bf16_counts_as_no_native_bf16(
    cpu_with, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_with({"avx2", "avx512f", "avx512_bf16"}, probe_speedup=2.0)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    choice = runtime.resolve_precision("auto", "cpu")
    assert choice.precision == "32-true"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in choice.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert runtime.resolve_precision("auto", "cpu").precision == "bf16-mixed"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_a_gpu_follows_its_bf16_support(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.resolve_precision("auto", "cuda").precision == expected


@pytest.mark.parametrize(("speedup", "expected"), [(0.91, "32-true"), (1.4, "bf16-mixed")])
def test_auto_on_a_bf16_gpu_follows_a_probe_of_the_training_step(
    monkeypatch: pytest.MonkeyPatch, speedup: float, expected: str
) -> None:
    """The H200 ran a launch-bound ResNet50 step slower in bf16 than in fp32: the flag alone
    would have chosen the slower precision."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    choice = runtime.resolve_precision("auto", "cuda", step_probe=lambda: speedup)
    assert choice.precision == expected
    assert f"{speedup:.2f}x fp32" in choice.reason
    given = runtime.resolve_precision("bf16-mixed", "cuda", step_probe=lambda: 0.5)
    assert given.precision == "bf16-mixed"  # asked for explicitly: no probe overrides it


def test_the_step_probe_times_a_copy_and_leaves_the_model_as_it_was() -> None:
    """The probe's code runs on a CPU as on a GPU (autocast on the device's type)."""
    import copy

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 2),
    )  # fmt: skip
    before = copy.deepcopy(model.state_dict())
    speedup = runtime.step_speedup(model, 4, 16, torch.device("cpu"), repeats=1)
    assert math.isfinite(speedup)
    assert speedup > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched
    assert all(p.grad is None for p in model.parameters())


def test_an_explicit_precision_wins_with_a_warning_when_it_is_the_slow_one(cpu_with) -> None:
    cpu_with({"avx2"})
    with pytest.warns(UserWarning, match="slow choice.*no native bf16.*32-true"):
        choice = runtime.resolve_precision("bf16-mixed", "cpu")
    assert choice == runtime.PrecisionChoice("bf16-mixed", "set explicitly")
    cpu_with({"avx512_bf16"}, probe_speedup=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16-mixed", "cpu").precision == "bf16-mixed"
        assert runtime.resolve_precision(32, "cpu").precision == "32"


def test_the_cpu_flags_are_read_where_linux_has_them() -> None:
    flags = runtime.cpu_flags()
    if os.path.exists("/proc/cpuinfo"):
        assert flags  # whichever CPU this is, it has some
    else:
        assert flags is None


def test_a_training_run_records_the_precision_auto_chose(train_cfg, cpu_with) -> None:
    from pneumonia.train import train

    cpu_with({"avx2"})  # as on an AVX2-only CPU, whatever this one is
    cfg = train_cfg("debug=fdr", "trainer.precision=auto")
    metrics = train(cfg)
    assert metrics["precision"]["used"] == "32-true"
    assert "no native bf16" in metrics["precision"]["reason"]
    assert cfg.trainer.precision == "32-true"  # what the checkpoint's config records


def test_the_bf16_probe_runs_on_this_cpu() -> None:
    """The real probe, on whatever CPU runs the tests: what holds on every kind is that it
    gives a positive, finite ratio, and quickly (``auto`` runs it once per process)."""
    import math
    import time

    runtime.bf16_matmul_speedup.cache_clear()
    start = time.perf_counter()
    ratio = runtime.bf16_matmul_speedup()
    elapsed = time.perf_counter() - start
    assert math.isfinite(ratio)
    assert ratio > 0
    assert elapsed < 1.0
    assert runtime.bf16_matmul_speedup() == ratio  # measured once, then remembered
