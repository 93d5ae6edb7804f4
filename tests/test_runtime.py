"""What the machine offers: threads and workers follow the CPUs this process may use."""

from __future__ import annotations

import os

import pytest

from pneumonia import runtime


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
