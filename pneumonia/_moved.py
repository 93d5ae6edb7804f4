"""The modules issue 27 moved into role packages, importable under their old names for one
release (0.2): ``import pneumonia.model`` is ``pneumonia.models.classifier``, with a
DeprecationWarning, and a run's recorded ``_target_`` of an old path still instantiates.

Old names that are packages now (``pneumonia.decision``, ``pneumonia.inference``,
``pneumonia.runs``) hand on the old module's names from their ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import warnings
from types import ModuleType

MOVED = {
    "pneumonia.model": "pneumonia.models.classifier",
    "pneumonia.backbones": "pneumonia.models.backbones",
    "pneumonia.optim": "pneumonia.models.optim",
    "pneumonia.callbacks": "pneumonia.models.callbacks",
    "pneumonia.budget": "pneumonia.models.budget",
    "pneumonia.checkpoint": "pneumonia.models.checkpoint",
    "pneumonia.calibration": "pneumonia.decision.calibration",
    "pneumonia.prior_shift": "pneumonia.decision.prior_shift",
    "pneumonia.shift": "pneumonia.decision.shift",
    "pneumonia.metrics": "pneumonia.decision.metrics",
    "pneumonia.predictions": "pneumonia.decision.predictions",
    "pneumonia.explain": "pneumonia.inference.explain",
    "pneumonia.deployment": "pneumonia.inference.deployment",
    "pneumonia.generalisation": "pneumonia.evaluation.generalisation",
    "pneumonia.aggregation": "pneumonia.runs.aggregation",
    "pneumonia.comparison": "pneumonia.evaluation.comparison",
    "pneumonia.resume": "pneumonia.runs.resume",
    "pneumonia.tracking": "pneumonia.runs.tracking",
    "pneumonia.plots": "pneumonia.reports.plots",
    "pneumonia.pages": "pneumonia.reports.pages",
    "pneumonia.runtime": "pneumonia.system.runtime",
    "pneumonia.launch": "pneumonia.system.launch",
    "pneumonia.files": "pneumonia.system.files",
    "pneumonia.evaluation.markdown": "pneumonia.evaluation.report_md",
    "pneumonia.evaluation.report": "pneumonia.decision.report",
    "pneumonia.evaluation.subgroups": "pneumonia.decision.subgroups",
}
# Old modules whose name is a package now: their dotted names in a recorded config
# (``pneumonia.runs.RunFolder``) point at the module that holds them today.
BECAME_PACKAGES = {
    "pneumonia.decision": "pneumonia.decision.rules",
    "pneumonia.inference": "pneumonia.inference.runner",
    "pneumonia.runs": "pneumonia.runs.folders",
}
_OLD_PATH = re.compile(
    r"^(" + "|".join(re.escape(k) for k in sorted({**MOVED, **BECAME_PACKAGES}, key=len,
                                                  reverse=True)) + r")\.([A-Za-z_]\w*)$"
)  # fmt: skip


def current_path(dotted: str) -> str:
    """A dotted name as a run recorded it before the move (``pneumonia.budget.TimeBudget``),
    as it is now (``pneumonia.models.budget.TimeBudget``); any other string unchanged."""
    match = _OLD_PATH.match(dotted)
    if match is None:
        return dotted
    module, name = match.groups()
    if module in BECAME_PACKAGES and not importlib.util.find_spec(f"{module}.{name}"):
        return f"{BECAME_PACKAGES[module]}.{name}"
    return f"{MOVED.get(module, module)}.{name}"


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module that moved (one module object, two names)."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}  # by the module's own name

    def find_spec(self, fullname, path, target=None):  # noqa: ARG002
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; the old name goes in version 0.2",
            DeprecationWarning,
            stacklevel=3,
        )
        module = importlib.import_module(MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The module ran under its own name already. Importing sets __spec__ to the old
        # name's spec (importlib._bootstrap._init_module_attrs): it is put back.
        module.__spec__ = self._specs[module.__name__]


def install() -> None:
    if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
        sys.meta_path.append(_OldNames())
