"""CSV cells a spreadsheet cannot run: nothing from a user's files is a formula.

A file named ``=HYPERLINK(...).png`` or a label cell ``+cmd|' /C calc'!A0`` written as-is
into predictions.csv or aggregate.csv is run as a formula by the spreadsheet that opens it.
OWASP's rule: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading apostrophe, which spreadsheets read as "this is text" and do not show.

The numbers the tool writes (a negative score ``-1.234567``) stay numbers: only text cells
(names, labels, attributes, errors) go through :func:`sheet_text` (:func:`sheet_cell` tells
them apart). The project's own readers
undo it with :func:`from_sheet`, exactly: a text that itself starts with apostrophes and then
one of those characters (``'=x``) gets one apostrophe more, so every string comes back as it
was written.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

TRIGGERS = "=+-@\t\r"  # what a spreadsheet reads as the start of a formula
# Apostrophes, then a trigger: a cell that would read back one apostrophe short.
_GUARDED = re.compile(f"'*[{re.escape(TRIGGERS)}]")


def sheet_text(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs: an apostrophe before it where it starts
    with a trigger, or with apostrophes and then one (the inverse of :func:`from_sheet`)."""
    return "'" + text if _GUARDED.match(text) else text


def from_sheet(cell: str) -> str:
    """A cell of a CSV this project wrote, as the text it was (``'=1+1.png`` -> ``=1+1.png``);
    any other cell is returned as it is."""
    return cell[1:] if cell.startswith("'") and _GUARDED.match(cell, 1) else cell


def sheet_cell(value: Any) -> str:
    """``value`` as a cell of a CSV the tool writes: a number as a number (a float with six
    decimals, a negative one with its sign), None empty, any text through :func:`sheet_text`."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, numbers.Number):  # int, bool, numpy's numbers
        return str(value)
    return sheet_text(str(value))
