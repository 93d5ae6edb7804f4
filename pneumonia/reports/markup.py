"""Text from data as inert markdown: nothing a user's files say becomes markup on a page.

File and folder names, a label file's cells (``sex``, ``source`` ...), class names, run
folders, model paths and error text reach report.md, aggregate.md and compare.md, and from
there report.html, aggregate.html and compare.html. Each goes through :func:`md_text` (or
:func:`md_code`, the same in a fixed font, or :func:`md_url` for the link of a figure the
command wrote), once, where the markdown is built, so a name like ``<img src=/etc/hostname>``
or ``| broken | table`` is shown as the text it is.
The page (:mod:`pneumonia.reports.pages`) renders with raw HTML off as a second guard.

This module imports nothing heavy: the markdown builders of every layer from here up import it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import quote

# As HTML entities, which markdown passes through and the browser shows as the character.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
# Markdown's inline punctuation (and the table's pipe): a backslash before each shows it as
# itself. ``>`` is an entity above; ``-``, ``+`` and ``.`` only mean something where a line
# starts (a list), so they are escaped there alone, and report.md stays readable as text.
_PUNCTUATION = set("\\`*_[]()#!|")
# A line that starts "- ", "+ " or "12. " is a list item; one of "=" under a line, a heading.
_LINE_START = re.compile(r"^([-+]|\d+\.|=)")


def md_text(value: Any) -> str:
    """``value`` (any data: a name, a cell, an error) as markdown that shows exactly its text.

    HTML's ``& < > "`` become entities, markdown's punctuation is backslash-escaped, and line
    breaks and other control characters become spaces (a table row is one line) and the ends'
    spaces go (a page shows none; four at a line's start would make a code block), so the text
    can sit anywhere: a heading, a list item, a table cell, an image's alt text, a line's start.
    """
    out = []
    for c in str(value).strip():
        if c in _ENTITIES:
            out.append(_ENTITIES[c])
        elif c in _PUNCTUATION:
            out.append("\\" + c)
        elif c != "\t" and unicodedata.category(c) == "Cc":  # \n, \r, \0 ...
            out.append(" ")
        else:
            out.append(c)
    return _LINE_START.sub(_escape_line_start, "".join(out).strip())


def _escape_line_start(match: re.Match) -> str:
    mark = match.group(1)
    return "&#61;" if mark == "=" else mark[:-1] + "\\" + mark[-1]  # "=" has no backslash escape


def md_code(value: Any) -> str:
    """``value`` as a code span (a path, a setting: shown as typed, in a fixed font) where it
    can be one, else as :func:`md_text`. A span shows its text as it is, HTML and markdown
    alike; only a backtick, a backslash or a pipe (which would end it, or a table cell
    around it), a control character or spaces at its ends need the other way."""
    text = str(value)
    if not text or text != text.strip() or any(_breaks_code(c) for c in text):
        return md_text(text)
    return f"`{text}`"


def _breaks_code(c: str) -> bool:
    return c in "`\\|" or unicodedata.category(c) == "Cc"


def md_url(path: str) -> str:
    """A relative path the command wrote (a figure), percent-encoded for a markdown link or
    image: no space, parenthesis or bracket of a name can end the link early. The page decodes
    it again (:func:`urllib.parse.unquote`) to find the file."""
    return quote(path, safe="/")
