"""Outputs are written whole or not at all, and with the mode a plain write would give them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pneumonia.system.files import atomic_path, umask, write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_an_atomic_write_gets_the_mode_of_a_plain_write(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        assert umask() == mask
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        write_text(tmp_path / "atomic.txt", "x")
        with atomic_path(tmp_path / "atomic.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic.txt") == _mode(plain) == 0o666 & ~mask
    assert _mode(tmp_path / "atomic.bin") == _mode(plain)


def test_rewriting_a_file_keeps_its_mode_as_a_plain_write_does(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_text(path, "{}")
    path.chmod(0o640)
    write_text(path, '{"a": 1}')
    assert _mode(path) == 0o640
    assert path.read_text() == '{"a": 1}'


def test_a_runs_outputs_share_one_mode(trained: dict) -> None:
    """metrics.json, the figures and both checkpoints: one mode, the umask's (was 0600 for the
    atomically written ones and 0644 for last.ckpt)."""
    run = trained["run"]
    outputs = [run / "metrics.json", trained["ckpt"], run / "checkpoints" / "last.ckpt"]
    outputs += sorted(run.glob("*.png"))
    modes = {p.name: oct(_mode(p)) for p in outputs}
    assert set(modes.values()) == {oct(0o666 & ~umask())}, modes
