"""benchmarks/bench.py: a case that fails fails the run, naming itself; the project's data case
runs on the real originals (every project and hand-tuned case reads them through it)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

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


def test_data_trains_on_every_training_image_and_a_dry_run_counts_its_batches(
    tmp_path: Path,
) -> None:
    """--data (gpu.sh's real images): train/ and val/ are linked as they are, so the project
    validates on val/ (official) and trains on all of train/; a folder without train/ is named;
    --max-batches stops each timed pass after that many batches."""
    bench = load_bench()
    data = tmp_path / "kermany"
    for split in ("train", "val"):
        (data / split / "NORMAL").mkdir(parents=True)
    root = bench.prepare_data(tmp_path / "work", data)
    assert (root / "train").resolve() == (data / "train").resolve()
    assert (root / "val").resolve() == (data / "val").resolve()
    assert bench.val_split(root) == "official"
    (tmp_path / "plain" / "train").mkdir(parents=True)
    assert bench.val_split(tmp_path / "plain") == "patient"  # the originals: no val/
    with pytest.raises(SystemExit, match="no train/ folder"):
        bench.prepare_data(tmp_path / "other", data / "val")

    batches = [(torch.zeros(4, 1), torch.zeros(4)) for _ in range(10)]
    seen = []
    assert len(bench.epochs(batches, 2, step=lambda x, y: seen.append(len(y)), max_batches=3)) == 2
    assert seen == [4] * 2 + [4] * 6  # the 2 warm-up batches, then 3 a pass
