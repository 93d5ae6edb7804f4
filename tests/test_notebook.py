"""The analysis notebook: stripped in git, and it runs on a finished run."""

from __future__ import annotations

import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_notebook_is_stripped_in_git() -> None:
    import nbformat

    nb = nbformat.read(REPO_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_analysis_notebook_executes_on_a_tiny_run(trained: dict, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PNEUMONIA_RUN_DIR", str(trained["run"]))
    nb = nbformat.read(REPO_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(trained["tmp"])}},
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 5  # curves, confusion matrix, ROC, PR, Grad-CAM (+ mistakes)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"threshold {trained['metrics']['threshold']:.3f}" in text
