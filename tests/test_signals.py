"""SIGTERM and Ctrl-C end the decoded-image cache build as they end training: the worker
processes end with it, no worker prints a traceback, the log says how to continue, the exit
status is 128 + the signal, and the same command then finishes the build from where it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BUILD = textwrap.dedent(
    """
    import logging, os, sys, time
    from pathlib import Path
    import numpy as np
    import pneumonia.data.cache_build as cache_build

    logging.basicConfig(level=logging.INFO)
    root = Path(sys.argv[1])
    cache_build.PROCESS_MIN_IMAGES = 0  # worker processes even for a few images
    cache_build.BUILD_CHUNK = 8

    def slow_decode(path):  # module level: sent to the worker processes
        (root / "pids" / str(os.getpid())).touch()
        (root / "decoded" / path.name).touch()
        time.sleep(0.03)
        return np.full((4, 4), len(path.name), dtype=np.uint8)

    files = sorted((root / "images").iterdir())
    cache_build.build_cache(files, root / "cache" / "c", slow_decode, {"x": 1}, workers=2)
    print("built")
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes: Linux")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_cache_build_and_its_workers_and_the_build_resumes(
    tmp_path: Path, signum: int
) -> None:
    for folder in ("images", "pids", "decoded"):
        (tmp_path / folder).mkdir()
    for i in range(160):
        (tmp_path / "images" / f"{i:03d}.img").write_bytes(os.urandom(64))
    script = tmp_path / "build.py"
    script.write_text(BUILD)
    command = [sys.executable, str(script), str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    rows = tmp_path / "cache" / ".partial-c" / "index.part"
    deadline = time.monotonic() + 120
    while not (rows.is_file() and rows.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows.is_file(), proc.communicate()[1]
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # a terminal's Ctrl-C reaches the whole process group
    else:
        os.kill(proc.pid, signum)  # a scheduler's SIGTERM, to the command
    _, err = proc.communicate(timeout=60)  # it used to hang after Ctrl-C
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"cache build was stopped ({name}) at image" in err
    assert "the same command continues from there" in err
    assert "Traceback" not in err  # neither the command's nor a worker's
    workers = [int(p.name) for p in (tmp_path / "pids").iterdir()]
    assert workers
    time.sleep(0.5)
    assert [pid for pid in workers if _alive(pid)] == []  # no worker left behind
    assert not (tmp_path / "cache" / "c").exists()  # nothing a reader could take as whole

    decoded = len(list((tmp_path / "decoded").iterdir()))
    for f in (tmp_path / "decoded").iterdir():
        f.unlink()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Resuming the decoded-image cache at image" in again.stderr
    assert len(list((tmp_path / "decoded").iterdir())) < 160  # the finished images were kept
    assert decoded >= 8
