"""Worker pools that end with their command: on SIGTERM, Ctrl-C or any error, a pool's queued
work is dropped and its worker processes are ended at once, instead of the command waiting for
every queued image (``Executor.map`` queues them all) or leaving workers behind.

Worker processes ignore Ctrl-C, which a terminal sends to the whole process group: their
parent ends them, and none prints a traceback of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


@contextlib.contextmanager
def threads(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose queued tasks are cancelled when the block ends, by an exception
    too (those already running finish: a decode or a hash, a fraction of a second)."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handlers, inherited by fork


@contextlib.contextmanager
def mapper(
    job: Callable[[Any], Any], workers: int, *, processes: bool = True, chunksize: int = 8
) -> Iterator[Callable[[Iterable[Any]], list[Any]]]:
    """``run(items) -> [job(item) ...]`` in order: in worker processes where asked, ``job``
    pickles and there are cores for them (forked, on Linux only: on macOS fork is unsafe once
    torch has started), else in threads. An exception in the block (a signal's too) ends the
    processes at once."""
    processes = processes and workers > 1 and sys.platform.startswith("linux")
    if processes:
        try:
            pickle.dumps(job)
        except Exception:
            processes = False
    if not processes:
        with threads(workers) as pool:
            yield lambda items: list(pool.map(job, items))
        return
    pool = mp.get_context("fork").Pool(workers, initializer=_quiet_worker)
    try:
        yield lambda items: pool.map(job, items, chunksize=chunksize)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
