"""How this process was launched: alone, or as one rank of several started by ``torchrun`` or
``srun``; and what the configs need to know of it (OmegaConf resolvers, registered on import).

Under ``torchrun`` or ``srun`` every rank runs the whole command and composes its own config,
Hydra's run folder included. Left to the clock, each rank would name a folder of its own (the
known trap of Hydra under DDP). Here the ranks of one launch agree without talking: on one node
they are children of one launcher process (torchrun's agent, or SLURM's step daemon), and the
folder is named after that process's start time. Across nodes no such common process exists,
so a multi-node launch is asked for its ``hydra.run.dir``, the same on every node.

- ``${pneumonia.run_stamp:FORMAT}``: the run folder's time stamp (``hydra.run.dir``).
- ``${pneumonia.rank_suffix:}``: ``""`` on rank 0, ``_rank<N>`` elsewhere (each rank's log).
- ``${pneumonia.on_rank_zero:VALUE}``: VALUE on rank 0, null elsewhere (Hydra's ``.hydra``).
- ``${pneumonia.launched_devices:DEFAULT}``, ``${pneumonia.launched_nodes:DEFAULT}``: the
  processes per node and the nodes that torchrun or srun started, for ``trainer=ddp``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf, read_write


@dataclass(frozen=True)
class Launch:
    """The launcher that started this process (``None`` when it was started alone)."""

    launcher: str | None  # "torchrun" | "srun" | None
    rank: int
    processes_per_node: int
    nodes: int

    @property
    def several(self) -> bool:
        return self.processes_per_node * self.nodes > 1


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    digits = value.split("(")[0].split(",")[0]  # SLURM_TASKS_PER_NODE may read "2(x3)"
    return int(digits) if digits.isdigit() else default


def detect() -> Launch:
    """Read the launcher's environment variables.

    torchrun sets ``TORCHELASTIC_RUN_ID`` with ``RANK``, ``LOCAL_WORLD_SIZE`` and
    ``GROUP_WORLD_SIZE`` (nodes); srun sets ``SLURM_STEP_ID`` with ``SLURM_PROCID``,
    ``SLURM_STEP_NUM_TASKS`` and ``SLURM_STEP_NUM_NODES`` (a batch script outside srun has no
    step id, and is one process).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return Launch(
            "torchrun",
            rank=_int("RANK", 0),
            processes_per_node=_int("LOCAL_WORLD_SIZE", 1),
            nodes=_int("GROUP_WORLD_SIZE", 1),
        )
    if "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ:
        nodes = _int("SLURM_STEP_NUM_NODES", _int("SLURM_NNODES", 1))
        tasks = _int("SLURM_STEP_NUM_TASKS", _int("SLURM_NTASKS", 1))
        return Launch("srun", _int("SLURM_PROCID", 0), max(1, tasks // max(1, nodes)), nodes)
    # Alone, or a rank that Lightning's own launcher started: Lightning gives that one the run
    # folder, a log file of its own and no .hydra (hydra.run.dir, hydra.job.name, output_subdir).
    return Launch(None, rank=0, processes_per_node=1, nodes=1)


class LaunchError(RuntimeError):
    """The ranks of a launch cannot agree on a run folder by themselves."""


def _started_at(pid: int) -> datetime:
    """When process ``pid`` started, from Linux's /proc (to the clock tick, 1/100 s)."""
    boot = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    # the command name (field 2) may hold spaces: fields count from the last ')'
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of proc(5), starttime
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))


def run_stamp(fmt: str) -> str:
    """The run folder's stamp: now, or, for a rank of a one-node launch, when the launcher
    started (the same for every rank of that launch).

    Raises:
        LaunchError: a launch over several nodes (its ranks share no process), or a system
            without /proc: saying to give ``hydra.run.dir``.
    """
    launch = detect()
    if not launch.several:
        return datetime.now().strftime(fmt)
    if launch.nodes > 1:
        raise LaunchError(
            f"This {launch.launcher} launch spans {launch.nodes} nodes, whose ranks cannot agree "
            "on a run folder named by the clock: give every node the same one, e.g. "
            "hydra.run.dir=outputs/train/runs/$SLURM_JOB_ID (SLURM) or "
            "hydra.run.dir=outputs/train/runs/<the --rdzv-id> (torchrun)."
        )
    try:
        return _started_at(os.getppid()).strftime(fmt)
    except (OSError, ValueError, IndexError, StopIteration) as e:
        raise LaunchError(
            f"Cannot tell when {launch.launcher} started ({e}), which names the run folder "
            "every rank shares: give it yourself, e.g. hydra.run.dir=outputs/train/runs/ddp-1."
        ) from e


# What Lightning's own launcher sets in the launching process for its ranks.
LIGHTNING_RANK_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def lightning_ranks_run_this_job() -> Iterator[None]:
    """One job of a multirun, for the ranks Lightning's own DDP launcher starts.

    Lightning starts ranks > 0 as ``python -m <module> <this command line>
    hydra.run.dir=<hydra.run.dir>``. In a multirun that command line is the whole sweep (each
    rank then ran a sweep of its own, in a sweep folder of its own) and ``hydra.run.dir`` is not
    the job's folder. While the job runs, the command line is the job's own (its config
    folder, config name and overrides: a single run) and ``hydra.run.dir`` its folder. After
    it, Lightning's rank variables and the process group go, so that the next job of the sweep
    starts ranks of its own instead of waiting for the last job's.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    alone = detect().launcher is None and "LOCAL_RANK" not in os.environ
    if not (alone and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        yield
        return
    hydra = HydraConfig.get()
    flags = [
        f"--config-dir={source.path.removeprefix('file://')}"
        for source in hydra.runtime.config_sources
        if source.provider == "command-line"
    ] + [f"--config-name={hydra.job.config_name}"]
    argv, run = sys.argv, hydra.run
    before = OmegaConf.to_container(run)["dir"]  # unresolved, to put back as it was
    sys.argv = [argv[0], *flags, *hydra.overrides.task]
    with read_write(run):
        run.dir = hydra.runtime.output_dir
    set_before = {name: os.environ.get(name) for name in LIGHTNING_RANK_VARIABLES}
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(run):
            run.dir = before
        for name, value in set_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_dir(output_dir: str | None, log_dir: str, task: str, stamp: str) -> str:
    """A command's run folder (Hydra's log and config record): under ``output_dir`` when the
    command was given one (``<output_dir>/logs/<task>_<stamp>``: nothing lands in an
    ``outputs/`` of the folder it was started in, and no earlier record there is written over),
    else ``<log_dir>/<task>/runs/<stamp>``."""
    if output_dir is not None:
        return f"{output_dir}/logs/{task}_{stamp}"
    return f"{log_dir}/{task}/runs/{stamp}"


def _register() -> None:
    resolvers = {
        "pneumonia.run_stamp": run_stamp,
        "pneumonia.run_dir": run_dir,
        "pneumonia.rank_suffix": lambda: f"_rank{detect().rank}" if detect().rank else "",
        "pneumonia.on_rank_zero": lambda value: None if detect().rank else value,
        "pneumonia.launched_devices": lambda default: (
            detect().processes_per_node if detect().launcher else default
        ),
        "pneumonia.launched_nodes": lambda default: (
            detect().nodes if detect().launcher else default
        ),
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            # The stamp is cached in its config, as Hydra's ${now:} is: read twice in one run,
            # it names one folder, and a sweep's jobs (copied or pickled to SLURM) keep it. The
            # others are read from each process's own environment, never from a copied cache.
            cached = name == "pneumonia.run_stamp"
            OmegaConf.register_new_resolver(name, resolver, use_cache=cached)


_register()
