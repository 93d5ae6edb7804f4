"""report.html (and the aggregate's and comparison's pages) opened in a real headless browser:
Debian's Chromium driven through Playwright. Skipped where Chromium is absent (CI installs
it: apt-get install chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LAPTOP


def _open(browser, page_file: Path):
    page = browser.new_page(viewport=LAPTOP)
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    return page


def _images(page) -> list[list]:
    return page.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )


@pytest.mark.slow
def test_report_html_shows_every_figure_and_the_metrics_on_a_laptop_screen(
    trained: dict, tmp_path: Path, browser
) -> None:
    from pneumonia.evaluate import evaluate

    from .test_evaluate import compose_eval

    evaluate(compose_eval(tmp_path, trained["ckpt"], "bootstrap.resamples=50", "mistakes=3",
                          "prevalence=0.05"))  # fmt: skip
    out = tmp_path / "eval"
    page = _open(browser, out / "report.html")
    images = _images(page)
    names = {alt for alt, _, _ in images}
    assert {"confusion matrix", "roc", "pr", "reliability"} <= names
    assert len(images) >= 4 + 1  # the figures, and at least one mistake's Grad-CAM
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
    first_table = page.inner_text("table")
    assert "AUROC" in first_table
    assert "Specificity" in first_table
    body = page.inner_text("body")
    for heading in ("Operating points", "Calibration", "Most confident mistakes"):
        assert heading in body
    assert "was not written" not in body
    # readable on a laptop: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
    page.screenshot(path=str(tmp_path / "report_screenshot.png"), full_page=True)
    assert (tmp_path / "report_screenshot.png").stat().st_size > 10_000

    # pneumonia-compare writes the same kind of page (here: the predictions against themselves)
    from pneumonia.compare import main as compare

    rows = out / "predictions.csv"
    assert compare([str(rows), str(rows), "--out", str(tmp_path / "cmp"), "--resamples", "50"]) == 0
    page = _open(browser, tmp_path / "cmp" / "compare.html")
    images = _images(page)
    assert images
    assert all(complete and width > 0 for _, complete, width in images)
    assert "AUROC" in page.inner_text("table")


def test_a_figure_the_page_lacks_is_said_to_be_missing_not_broken(tmp_path: Path, browser):
    from pneumonia.reports.pages import write_page

    report = tmp_path / "report.md"
    report.write_text("# A\n\n| metric | value |\n|---|---|\n| AUROC | 0.9 |\n\n![roc](roc.png)\n")
    page = _open(browser, write_page(report, "A", ["roc.png"]))
    assert _images(page) == []
    assert "(roc.png was not written)" in page.inner_text("body")
    assert page.inner_text("td") == "AUROC"


def test_aggregate_html_shows_the_pooled_figures_and_the_table(tmp_path: Path, browser) -> None:
    """A 3-fold sweep's out-of-fold predictions pooled: the page's ROC and calibration load."""
    from pneumonia.aggregate import main as aggregate

    from .test_aggregate import fold_rows, job

    labels = ["PNEUMONIA" if i % 3 else "NORMAL" for i in range(30)]
    probs = [(0.6 if y == "PNEUMONIA" else 0.4) + (i % 5) * 0.05 for i, y in enumerate(labels)]
    root = tmp_path / "cv"
    for fold in range(3):
        job(
            root / str(fold), [f"data.fold={fold}", "data.folds=3"], {"val/auroc": 0.8 + fold / 100}
        )
        part = list(range(fold, 30, 3))
        fold_rows(root / str(fold), [f"img{i:02d}.png" for i in part], [probs[i] for i in part],
                  [labels[i] for i in part])  # fmt: skip
    assert aggregate([str(root)]) == 0
    page = _open(browser, root / "aggregate.html")
    images = _images(page)
    assert len(images) >= 2  # the pooled ROC and calibration curve
    assert all(complete and width > 0 for _, complete, width in images), images
    assert "val/auroc" in page.inner_text("body")
    assert "was not written" not in page.inner_text("body")
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
