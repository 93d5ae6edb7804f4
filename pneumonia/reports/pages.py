"""One page a person reads: a report's markdown (report.md, aggregate.md, compare.md) as a
self-contained HTML file, every figure it links inlined, laid out for a laptop screen.

The markdown stays the one source of each report's words and tables; the page adds no numbers
of its own. A figure the markdown links but the folder lacks is said to be missing, never left
as a broken image.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown as markdown_lib

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

_IMAGE = re.compile(r'<img alt="([^"]*)" src="([^"]+)"\s*/?>')


def html_page(text: str, folder: Path, title: str) -> str:
    """``text`` (markdown) as one HTML page, the images it links from ``folder`` inlined."""

    def inline(match: re.Match) -> str:
        alt, src = match.group(1), html.unescape(match.group(2))
        path = folder / src
        if src.startswith("data:"):
            return match.group(0)
        if not path.is_file():
            return f'<span class="missing">({html.escape(src)} was not written)</span>'
        kind = "svg+xml" if path.suffix == ".svg" else path.suffix.lstrip(".").lower()
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{alt}" title="{alt}" src="data:image/{kind};base64,{data}">'

    body = markdown_lib.markdown(text, extensions=["tables"])
    body = _IMAGE.sub(inline, body)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def write_page(markdown_path: Path, title: str) -> Path:
    """The HTML page of a markdown report, beside it (``report.md`` -> ``report.html``)."""
    page = markdown_path.with_suffix(".html")
    write_text(page, html_page(markdown_path.read_text(), markdown_path.parent, title))
    return page
