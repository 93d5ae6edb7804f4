"""One owner per output folder: a training run, an evaluate, a predict or an export holds the
folder it writes while it runs (a lock file with its process and host), and refuses a folder
another one holds or has written. Two commands writing one folder would mix their files
silently: a Grad-CAM of one shown under the other's report, one run's checkpoints beside
another's metrics."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pneumonia.decision.predictions import PREDICTIONS
from pneumonia.runs.folders import RunFolderError, check_writable
from pneumonia.runs.layout import OUTPUTS, last_checkpoint

LOCK = ".pneumonia-run.lock"  # pid and host of the training run that holds its folder


def _holder(lock: Path) -> str | None:
    """``pid@host`` of a live process that holds ``lock``, or None (no lock, or a dead one)."""
    try:
        pid, host = lock.read_text().split("@", 1)
        if host.strip() != socket.gethostname():
            return f"{pid}@{host.strip()}"  # another machine's: cannot tell, so it holds
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return None
    return f"{pid}@{host.strip()}"


def _take(lock: Path, folder: Path, what: str, elsewhere: str) -> None:
    """Write this process's ``lock`` in ``folder``, unless a live process of another holds it.
    Created exclusively: of two commands started at once, one gets it."""
    mine = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            with open(lock, "x") as f:
                f.write(mine)
            return
        except FileExistsError:
            holder = _holder(lock)
            if holder is None or int(holder.split("@")[0]) == os.getpid():
                lock.unlink(missing_ok=True)  # a dead process's, or this one's: take it over
                continue
            raise RunFolderError(
                f"The {'run ' if what == 'training run' else ''}folder {folder} is held by "
                f"another {what} (process {holder}). Let it finish, or write this one "
                f"elsewhere ({elsewhere})."
            ) from None
    lock.write_text(mine)


@contextlib.contextmanager
def _held(folder: Path, what: str, elsewhere: str, refuse: Callable[[], None]) -> Iterator[None]:
    """``folder`` held (:data:`LOCK`) while the block runs; ``refuse`` raises, with the lock
    taken, when the folder holds what this command must not write over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    _take(lock, folder, what, elsewhere)
    try:
        refuse()
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def training_folder(folder: Path, *, resume_from: Path | None) -> Iterator[None]:
    """Hold ``folder`` for one training run, while it runs.

    A training run never writes into a folder another one holds (a live process's lock) or
    has written (its checkpoints or metrics.json), unless it resumes from a checkpoint of
    that folder: two runs' files would mix, silently.

    Raises:
        RunFolderError: naming the other run and both ways forward.
    """
    folder = folder.resolve()
    elsewhere = "hydra.run.dir=...; by default every run gets a folder of its own"

    def refuse() -> None:
        resuming_here = resume_from is not None and folder in Path(resume_from).resolve().parents
        written = [name for name in OUTPUTS if (folder / name).exists()]
        if written and not resuming_here:
            last = last_checkpoint(folder)
            raise RunFolderError(
                f"The run folder {folder} holds another training run's {' and '.join(written)}: "
                f"a new run there would mix its files with them. Write this run elsewhere "
                f"({elsewhere}), or continue that run: ckpt_path={last} hydra.run.dir={folder}"
            )

    with _held(folder, "training run", elsewhere, refuse):
        yield


# What evaluate, predict and export write into their folder, which no later one may write over
COMMAND_OUTPUTS = {
    "evaluate": ("report.json", "report.md", "report.html", PREDICTIONS, "mistakes"),
    "predict": (PREDICTIONS, "gradcam"),
    "export": ("model.onnx", "model.pt", "model.json"),
    "recalibrate": ("recalibration.json", "report.md", "report.html", "checkpoints"),
    "compare": ("compare.json", "compare.md", "compare.html", "roc_compare.png"),
    "serve": ("uploads", "onnx"),
}


@contextlib.contextmanager
def command_folder(cfg: Any, command: str) -> Iterator[Path]:
    """The folder ``command`` (evaluate, predict, export) writes: ``cfg.output_dir``, else its
    run folder. Checked writable before any work, and held while the command runs, as a
    training run holds its folder: another command of any kind running there, or an earlier
    one's outputs in it, are refused (their Grad-CAMs and reports would mix, silently).

    Raises:
        RunFolderError: naming the folder, what is there, and the way forward.
    """
    folder = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    with output_folder(folder, command) as held:
        yield held


@contextlib.contextmanager
def output_folder(folder: Path, command: str, setting: str = "output_dir") -> Iterator[Path]:
    """:func:`command_folder` for a folder given as such (``setting`` chooses it)."""
    folder = Path(folder).expanduser().resolve()
    check_writable(folder, setting)
    elsewhere = f"{setting}=/another/folder; by default every run gets a folder of its own"

    def refuse() -> None:
        written = [name for name in COMMAND_OUTPUTS[command] if (folder / name).exists()]
        if written:
            raise RunFolderError(
                f"The folder {folder} holds an earlier {command}'s {', '.join(written)}: this "
                f"{command} would mix its files with them. Write it elsewhere ({elsewhere}), "
                "or move those files away first."
            )

    with _held(folder, f"command ({command} or training)", elsewhere, refuse):
        yield folder
