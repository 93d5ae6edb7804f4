"""benchmarks/bench.py: a case that fails fails the run, naming itself; the project's data case
runs on the real originals (every project and hand-tuned case reads them through it)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_case_fails_the_run_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run goes on past a failing case and keeps what it measured, then exits 1 naming it
    (9 of 15 cases once failed in a run that ended with status 0)."""
    bench = load_bench()

    def run_case(name: str, a) -> dict:
        if name == "data_project":
            raise RuntimeError("case data_project failed:\nBadImagesError: icon.png: 8x8 pixels")
        return {"rates": [10.0]}

    monkeypatch.setattr(bench, "run_case", run_case)
    out = tmp_path / "out"
    argv = ["bench.py", "--quick", "--cases", "data_notebook,data_project",
            "--workdir", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        bench.main()
    assert str(info.value) == "1 of 2 cases failed: data_project"
    assert "icon.png: 8x8 pixels" in (out / "errors.txt").read_text()
    assert "FAILED data_project: BadImagesError: icon.png" in (out / "summary.md").read_text()
    (kept,) = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert (kept["case"], kept["rates"]) == ("data_notebook", [10.0])


@pytest.mark.real_data
def test_the_projects_data_case_runs_on_the_real_originals(originals: Path, tmp_path: Path) -> None:
    """bench.py reads ../shared/data/originals itself when it is there, as it did when its
    project and hand-tuned cases all failed on two narrow X-rays (issue 26). In this process:
    the worker a case runs in would import torch and Lightning again (15 s of 20)."""
    bench = load_bench()
    work = tmp_path / "work"
    root = bench.prepare_data(work)
    assert (root / "train").resolve() == originals.resolve()
    a = argparse.Namespace(device="cpu", batch_size=16, repeats=1, max_batches=0)
    result = bench.case_data_project(a, root, work)
    assert result["rates"]
    assert all(rate > 0 for rate in result["rates"])
