"""Nothing from a user's files is markup (issue 28, rule 1): every page (report.html,
aggregate.html, compare.html) opened in Chromium with hostile text in every field that reaches
it: no script runs, no image but the command's own figures is shown, the hostile text is shown
as text, and no local file is embedded.

The pages come from the markdown builders and the commands themselves: report.html from
crafted results (and once through pneumonia-evaluate on a label file), aggregate.html and
compare.html through their commands on crafted folders (neither needs training).
"""

from __future__ import annotations

import base64
import csv
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_html_report import _open

SCRIPT = "<script>window.__pwned=1</script>"
ONERROR = '<img src=x onerror="window.__pwned=1">'
LOCAL_IMG = '<img src="/etc/hostname">'
MD_IMAGE = "![x](/etc/hostname)"
JS_LINK = "[x](javascript:window.__pwned=1)"
TABLE = "| broken | table"
HOSTILE = [SCRIPT, ONERROR, LOCAL_IMG, MD_IMAGE, JS_LINK, TABLE]
# The same without "/", for a single file or folder name
NAMES = [
    "<svg onload=window.__pwned=1>",
    ONERROR,
    "<img src=secret.png>",
    "![x](secret.png)",
    "[x](javascript:window.__pwned=1)",
    TABLE,
]


def png(path: Path, colour: tuple[int, int, int]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path.read_bytes()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A local picture outside every output folder: no page may carry its bytes."""
    path = tmp_path / "secret.png"
    png(path, (1, 2, 3))
    return path


def hostile_with(secret: Path) -> list[str]:
    """:data:`HOSTILE`, and the same pointed at ``secret`` by its absolute path."""
    return [*HOSTILE, f'<img src="{secret}">', f"![x]({secret})", f"![x](file://{secret})"]


def assert_inert(browser, page_file: Path, own: list[Path], shown: list[str], secrets=()):  # noqa: F811
    """``page_file`` in Chromium: no script ran, no event handler, link or foreign image is
    there, each image is one of the ``own`` figures, each of ``shown`` is visible as text and
    no byte of ``secrets`` (or /etc/hostname) is in the file."""
    text = page_file.read_text()
    for path in [*secrets, Path("/etc/hostname")]:
        if path.is_file() and path.stat().st_size:
            assert base64.b64encode(path.read_bytes()).decode() not in text, path
    page = _open(browser, page_file)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.scripts.length") == 0
    handlers = page.evaluate(
        "Array.from(document.querySelectorAll('*')).flatMap(e => e.getAttributeNames()"
        ".filter(a => a.startsWith('on')))"
    )
    assert handlers == []
    assert page.evaluate("document.links.length") == 0  # the builders write no link
    sources = page.evaluate("Array.from(document.images).map(i => i.getAttribute('src'))")
    figures = {base64.b64encode(p.read_bytes()).decode() for p in own}
    inlined = [s.removeprefix("data:image/png;base64,") for s in sources]
    assert sorted(set(inlined)) == sorted(figures), "an image that is not the command's own"
    assert page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")
    body = page.inner_text("body")
    missing = [s for s in shown if s not in body]
    assert not missing, f"not shown as text: {missing}"
    return page


def test_report_html_shows_hostile_names_sources_and_subgroups_as_text(
    tmp_path: Path,
    browser,  # noqa: F811
    secret: Path,
) -> None:
    """Every text field of report.md from data: the checkpoint, data folder and split, the
    per-source and per-subgroup names (through decision's real grouping), the mistakes' file
    names, class names and their Grad-CAMs."""
    from pneumonia.decision.predictions import Predictions
    from pneumonia.decision.report import by_source, metrics_report
    from pneumonia.decision.subgroups import subgroup_report
    from pneumonia.evaluation import evaluation_markdown
    from pneumonia.reports.pages import write_page

    values = hostile_with(secret)
    n = 4 * len(values)
    targets = torch.tensor([i % 2 for i in range(n)])
    probs = (0.3 + 0.4 * targets + torch.linspace(-0.25, 0.25, n)).clamp(0, 1)
    sources = [SCRIPT, TABLE, MD_IMAGE]  # few: each source's metrics take a bootstrap
    attributes = [{"sex": values[i % len(values)], "source": sources[i % 3]} for i in range(n)]
    preds = Predictions(probs, targets, 0.5, attributes=attributes)
    boot = {"resamples": 20}
    result = metrics_report(preds, **boot) | {
        "checkpoint": SCRIPT, "split": ONERROR, "data_root": f"{secret.parent}/{LOCAL_IMG}",
        "tta": False, "prior_shift": None, "shift": None,
        "decision": {"threshold_rule": "bayes", "threshold": 0.5, "cost_ratio": 1.0,
                     "prevalence": 0.5, "temperature": 1.0, "reference_prevalence": 0.5,
                     "target_sensitivity": 0.95},
        "by_source": by_source(preds, **boot),
        "subgroups": subgroup_report(preds, min_size=5, **boot),
    }  # fmt: skip
    assert set(result["subgroups"]["sex"]) == set(values)  # hostile names, each a group
    out = tmp_path / "eval"
    own = [out / "roc.png", out / "mistakes" / f"{NAMES[1]}_gradcam.png"]
    png(own[0], (200, 0, 0))
    png(own[1], (0, 200, 0))
    png(out / "stray.png", (0, 0, 200))  # in the folder, but not written by this command
    mistakes = [
        {"file": f"/data/{name}.png", "label": label, "probability": 0.9, "gradcam": gradcam}
        for name, label, gradcam in (
            (NAMES[1], TABLE, f"mistakes/{NAMES[1]}_gradcam.png"),
            (NAMES[0], SCRIPT, "stray.png"),
            (NAMES[3], MD_IMAGE, str(secret)),
            (NAMES[4], JS_LINK, "../secret.png"),
        )
    ]
    (out / "report.md").write_text(evaluation_markdown(result, ["roc.png"], mistakes))
    page_file = write_page(out / "report.md", f"Evaluation of {SCRIPT}",
                           ["roc.png", mistakes[0]["gradcam"]])  # fmt: skip
    shown = [*values, *(f"{NAMES[k]}.png" for k in (1, 0, 3, 4))]
    page = assert_inert(browser, page_file, own, shown, [secret, out / "stray.png"])
    assert page.title() == f"Evaluation of {SCRIPT}"
    alts = page.evaluate("Array.from(document.images).map(i => i.alt)")
    assert f"{NAMES[1]}.png" in alts  # the Grad-CAM's alt text: the file's name, as text
    assert page.inner_text("body").count("not a figure this command wrote") == 3


def test_aggregate_html_shows_hostile_folders_settings_and_seeds_as_text(
    tmp_path: Path,
    browser,  # noqa: F811
    secret: Path,
) -> None:
    """pneumonia-aggregate on a sweep whose folder, job folders, override values, seed, metric
    names and out-of-fold file names are hostile."""
    from pneumonia.aggregate import main as aggregate

    from .test_aggregate import fold_rows, job

    root = tmp_path / NAMES[0]
    labels = ["PNEUMONIA" if i % 3 else "NORMAL" for i in range(30)]
    probs = [(0.6 if y == "PNEUMONIA" else 0.4) + (i % 5) * 0.05 for i, y in enumerate(labels)]
    files = [f"{NAMES[i % len(NAMES)]}{i}.png" for i in range(30)]
    for fold in range(3):
        folder = root / f"{NAMES[fold]} {fold}"
        job(folder, [f"model.lr={SCRIPT}", f"data.fold={fold}", "data.folds=3", f"seed={ONERROR}"],
            {"val/auroc": 0.8 + fold / 100, f"val/{ONERROR}": 0.5, f"val/{TABLE}": 0.5,
             f"val/{MD_IMAGE}": 0.5})  # fmt: skip
        part = list(range(fold, 30, 3))
        fold_rows(folder, [files[i] for i in part], [probs[i] for i in part],
                  [labels[i] for i in part])  # fmt: skip
    job(root / TABLE, [f"model.lr=`{MD_IMAGE}`"], {"val/auroc": 0.7})  # a backtick ends a span
    job(root / JS_LINK, [f"model.lr={LOCAL_IMG}"], None)  # unfinished: named in the page
    assert aggregate([str(root)]) == 0
    own = sorted(root.glob("oof_*.png"))
    assert len(own) == 2
    shown = [f"model.lr={SCRIPT}", f"model.lr=`{MD_IMAGE}`", ONERROR, JS_LINK]
    shown += [f"val/{v}" for v in (ONERROR, TABLE, MD_IMAGE)]
    assert_inert(browser, root / "aggregate.html", own, [str(root), *shown], [secret])


def test_compare_html_shows_hostile_paths_classes_and_errors_as_text(
    tmp_path: Path,
    browser,  # noqa: F811
    secret: Path,
) -> None:
    """pneumonia-compare on two predictions.csv in hostile folders, with a hostile class
    name and images left out for a hostile error."""
    from pneumonia.compare import main as compare
    from pneumonia.decision.predictions import prediction_rows, write_predictions

    n, positive, error = 24, f"{ONERROR} {MD_IMAGE}", f"{SCRIPT} {JS_LINK} ![x]({secret})"
    files = [f"/data/{NAMES[i % len(NAMES)]}/`{i}`.png" for i in range(n)]
    targets = [i % 2 for i in range(n)]
    paths = []
    for k, name in enumerate((NAMES[2], NAMES[4])):
        probs = [min(1.0, 0.2 + 0.5 * t + 0.02 * ((i * (k + 3)) % 11)) for i, t in
                 enumerate(targets)]  # fmt: skip
        probs[0] = None  # left out, with the error below
        rows = prediction_rows(files, probs, threshold=0.5, class_names=["NORMAL", positive],
                               positive_index=1, targets=targets, errors={0: error})  # fmt: skip
        paths.append(tmp_path / name / "predictions.csv")
        paths[-1].parent.mkdir()
        write_predictions(paths[-1], rows)
    out = tmp_path / "cmp"
    assert compare([*map(str, paths), "--out", str(out), "--resamples", "20"]) == 0
    shown = [*map(str, paths), positive, files[0], error]
    assert_inert(browser, out / "compare.html", [out / "roc_compare.png"], shown, [secret])


TRICKY = [
    *HOSTILE, *NAMES, "`", "``a``", "a`b", "a\\", "\\", "\\|", "a|b", "|", "*a*", "_a_", "**a**",
    "~~a~~", "1. a", "12) a", "- a", "+ a", "* a", "# a", "> a", "=", "===", "---", "***", "___",
    "    code", "\tx", "&amp;", "&#60;", "&lt;", "&", "<", ">", "<>", "a  \nb", "a\r\nb", "\r",
    "[a]: http://x", "[a][b]", "[^1]", "<http://x>", "<a@b.c>", "<!-- c -->", "<?php x ?>",
    "x\x00y", "\x02klzzwxh:0000\x03", "'", '"', "{#id}", "![]()", "é ∑ 中 🫁", "a\u2028b",
]  # fmt: skip


def _rendered(text: str, raw_html: bool) -> tuple[list[str], str]:
    """The tags and the text of ``text`` rendered as Python-Markdown renders the pages, with
    raw HTML on (the escaping alone) or off (the page's own guard too)."""
    from html.parser import HTMLParser

    import markdown

    md = markdown.Markdown(extensions=["tables"])
    if not raw_html:
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")

    class Parser(HTMLParser):
        tags: list[str] = []
        text = ""

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_startendtag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text += data

    parser = Parser()
    parser.tags = []
    parser.feed(md.convert(text))
    return parser.tags, parser.text


def _tricky(seed: int = 0, count: int = 300) -> list[str]:
    """:data:`TRICKY`, and random strings of markdown's and HTML's characters."""
    import random

    rng = random.Random(seed)
    alphabet = "<>&\"'`*_[]()!#|-+.=~:/\\ \n\tax1;"
    made = ["".join(rng.choices(alphabet, k=rng.randint(1, 24))) for _ in range(count)]
    return TRICKY + made


@pytest.mark.parametrize("raw_html", [True, False], ids=["raw-html-on", "raw-html-off"])
def test_md_text_and_md_code_show_any_text_as_itself_wherever_it_sits(raw_html: bool) -> None:
    """The escaping holds alone (raw HTML on, as in any markdown viewer and TensorBoard): in a
    paragraph, a heading, a list item, a table cell and at a line's start, each string renders
    as exactly its text (spaces and control characters as one space), with no tag of its own."""
    import unicodedata

    from pneumonia.reports.markup import md_code, md_text

    def plain(s: str) -> str:
        s = "".join(" " if unicodedata.category(c) == "Cc" else c for c in s)
        return " ".join(s.split())

    places = {  # markdown around the value -> its tags, its text
        "x {} y": (["p"], "x {} y"),
        "# {}": (["h1"], "{}"),
        "- {}": (["ul", "li"], "{}"),
        "| a | b |\n|---|---|\n| {} | z |": (
            ["table", "thead", "tr", "th", "th", "tbody", "tr", "td", "td"], "a b {} z"),
        "para\n{}": (["p"], "para {}"),
        "{}": (["p"], "{}"),
    }  # fmt: skip
    wrong = []
    for value in _tricky():
        if not plain(value):
            continue
        for escape in (md_text, md_code):
            for place, (tags, text) in places.items():
                got_tags, got_text = _rendered(place.replace("{}", escape(value)), raw_html)
                if escape is md_code and got_tags.count("code") == 1:
                    got_tags.remove("code")
                if (got_tags, plain(got_text)) != (tags, plain(text.replace("{}", value))):
                    wrong.append((escape.__name__, place, value, got_tags, got_text))
    assert not wrong, wrong[:5]


def test_the_page_inlines_only_the_listed_figures_inside_its_folder(tmp_path: Path) -> None:
    """The renderer's own guard, whatever markdown it is handed: raw HTML is text, a link or
    image with a scheme is no link, and an image is inlined only if the caller says it wrote
    it and it resolves inside the folder (no absolute path, ``..`` or symlink out)."""
    from pneumonia.reports.pages import html_page

    folder = tmp_path / "out"
    own = png(folder / "fig.png", (9, 9, 9))
    secret = png(tmp_path / "secret.png", (1, 2, 3))
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    png(folder / "unlisted.png", (4, 5, 6))
    text = "\n\n".join([
        "![fig](fig.png) ![gone](gone.png) ![link](link.png) ![unlisted](unlisted.png)",
        f"![abs]({tmp_path / 'secret.png'}) ![up](../secret.png) ![file](file:///etc/hostname)",
        "![data](data:image/png;base64,AAAA) ![web](http://example.com/x.png)",
        "[js](javascript:alert(1)) [tab](java\tscript:alert(1)) [web](http://example.com)",
        "<script>alert(1)</script>", '<img src="/etc/hostname">', '<a href="x" onclick="y">a</a>',
    ])  # fmt: skip
    page = html_page(text, folder, "<title>", ["fig.png", "gone.png", "link.png", "../x.png"])
    assert page.count("<img") == 1
    assert base64.b64encode(own).decode() in page
    assert base64.b64encode(secret).decode() not in page
    assert "(gone.png was not written)" in page
    assert page.count("not a figure this command wrote") == 7
    assert "<a " not in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '&lt;a href="x" onclick="y"&gt;a&lt;/a&gt;' in page
    assert "<title>&lt;title&gt;</title>" in page


@pytest.mark.slow
def test_evaluate_shows_a_hostile_label_file_as_text(
    trained: dict,
    tmp_path: Path,
    browser,  # noqa: F811
    secret: Path,
) -> None:
    """The real path: pneumonia-evaluate on a label file (data=manifest) whose file names,
    ``sex`` and ``site`` cells are hostile, with the mistakes' Grad-CAMs on the page."""
    from omegaconf import open_dict

    from pneumonia.evaluate import evaluate

    from .test_evaluate import compose_eval

    root = tmp_path / NAMES[2]
    sources = sorted((trained["root"] / "test").rglob("*.jpeg"))
    values = hostile_with(secret)
    lines = []
    for i, source in enumerate(sources):
        rel = Path(f"{NAMES[i % len(NAMES)]}{i}.jpeg")
        if i % 4 == 3:  # a hostile path whose whole text needs its folders
            rel = Path("<script>window.__pwned=1<") / f"script>{i}.jpeg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / rel)
        lines.append([str(rel), source.parent.name, values[i % len(values)],
                      values[-1 - i % len(values)]])  # fmt: skip
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "sex", "site"], *lines])
    ckpt = tmp_path / f"{NAMES[0]}.ckpt"
    shutil.copy(trained["ckpt"], ckpt)
    cfg = compose_eval(tmp_path, trained["ckpt"], "data=manifest",
                       "data.table.columns.source=site", "bootstrap.resamples=20", "mistakes=3",
                       "subgroups.min_size=2")  # fmt: skip
    with open_dict(cfg):  # Hydra's override grammar takes none of these names
        cfg.ckpt_path, cfg.data.root = str(ckpt), str(root)
    result = evaluate(cfg)
    out = tmp_path / "eval"
    assert set(result["subgroups"]["sex"]) <= set(values)
    assert len(result["subgroups"]["sex"]) >= 2
    own = [out / f"{n}.png" for n in ("confusion_matrix", "roc", "pr", "reliability")]
    own += sorted((out / "mistakes").glob("*.png"))
    assert len(own) > 4  # at least one Grad-CAM, named from a hostile file name
    shown = [*result["subgroups"]["sex"], *result["by_source"], str(ckpt), str(root)]
    page = assert_inert(browser, out / "report.html", own, shown, [secret])
    assert page.title() == f"Evaluation of {ckpt.name}"
