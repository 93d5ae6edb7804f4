"""One page a person reads: a report's markdown (report.md, aggregate.md, compare.md) as a
self-contained HTML file, every figure it links inlined, laid out for a laptop screen.

The markdown stays the one source of each report's words and tables; the page adds no numbers
of its own. A figure the markdown links but the folder lacks is said to be missing, never left
as a broken image.

Nothing from a user's files becomes markup (issue 28): raw HTML is shown as text, a link with
a scheme is no link, and only the figures the command says it wrote are inlined, each a
relative path that resolves inside the folder. A label cell holding ``<img src="/etc/passwd">``
cannot make a mailed report carry that file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote
from xml.etree import ElementTree

import markdown as markdown_lib
from markdown.treeprocessors import Treeprocessor

from pneumonia.system.files import write_text

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       margin: 0; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.5em; overflow-wrap: anywhere; } h2 { font-size: 1.2em; margin-top: 1.8em;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; display: block;
        overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #d9d9de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f1f4; } tr:nth-child(even) td { background: #fafafb; }
code { font-size: 0.9em; overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; }
p > img { max-width: 32%; min-width: 260px; margin: 4px 1% 4px 0; vertical-align: top; }
td img { max-width: 180px; }
.missing { color: #a33; font-style: italic; }
"""


class _OwnFiguresOnly(Treeprocessor):
    """Each image the page shows is a figure the command wrote, inlined; each link stays in the
    folder. Anything else (an absolute path, ``..``, a symlink out of the folder, a scheme such
    as ``javascript:``, ``data:``, ``file:`` or ``http:``) is shown as text and never read."""

    def __init__(self, md: markdown_lib.Markdown, folder: Path, figures: Iterable[str]) -> None:
        super().__init__(md)
        self.folder = folder.resolve()
        self.figures = {_relative(f) for f in figures} - {None}

    def run(self, root: ElementTree.Element) -> None:
        for parent in list(root.iter()):
            for i, el in enumerate(parent):
                if el.tag == "img":
                    parent[i] = self.figure(el)
                    parent[i].tail = el.tail
                elif el.tag == "a" and not _local_link(el.get("href", "")):
                    el.tag = "span"  # its text stays, the link goes
                    el.attrib.clear()

    def figure(self, img: ElementTree.Element) -> ElementTree.Element:
        src, alt = unquote(img.get("src", "")), img.get("alt", "")
        name = _relative(src)
        path = self.folder / name if name else None
        if name not in self.figures or not path.resolve().is_relative_to(self.folder):
            return _note(f"(image {src!r} not shown: not a figure this command wrote)")
        if not path.is_file():
            return _note(f"({src} was not written)")
        kind = "svg+xml" if path.suffix == ".svg" else path.suffix.lstrip(".").lower()
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return ElementTree.Element(
            "img", {"alt": alt, "title": alt, "src": f"data:image/{kind};base64,{data}"}
        )


def _relative(path: str) -> str | None:
    """``path`` relative to the page's folder, normalised (``mistakes/a.png``), or None where
    it is not one: a scheme (``javascript:``, ``C:``), an absolute path, ``..``, a control
    character."""
    if not path or ":" in path or "\\" in path or path.startswith("/"):
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return None
    parts = PurePosixPath(path).parts
    return None if ".." in parts else str(PurePosixPath(*parts))


def _local_link(href: str) -> bool:
    """Whether a link stays in the folder; a browser drops spaces and control characters
    before it reads a scheme (" java script:"), so a link with any is none."""
    return not any(c.isspace() for c in href) and _relative(unquote(href)) is not None


def _note(text: str) -> ElementTree.Element:
    note = ElementTree.Element("span", {"class": "missing"})
    note.text = text
    return note


def html_page(text: str, folder: Path, title: str, figures: Iterable[str]) -> str:
    """``text`` (markdown) as one HTML page, the ``figures`` (paths relative to ``folder``, the
    files the command wrote there) inlined where the markdown shows them.

    Raw HTML in ``text`` is shown as text, not run: the markdown builders escape data
    (:func:`pneumonia.reports.markup.md_text`), and this is the guard behind them.
    """
    md = markdown_lib.Markdown(extensions=["tables"])
    md.preprocessors.deregister("html_block")  # raw HTML blocks ...
    md.inlinePatterns.deregister("html")  # ... and inline tags stay text
    md.treeprocessors.register(_OwnFiguresOnly(md, folder, figures), "own_figures", -10)
    body = md.convert(text)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def write_page(markdown_path: Path, title: str, figures: Iterable[str]) -> Path:
    """The HTML page of a markdown report, beside it (``report.md`` -> ``report.html``), with
    ``figures`` (the files the command wrote there, relative to it) inlined."""
    page = markdown_path.with_suffix(".html")
    text = markdown_path.read_text()
    write_text(page, html_page(text, markdown_path.parent, title, figures))
    return page
