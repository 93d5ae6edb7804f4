"""The package's layering: lower layers never import higher ones, inference loads no plotting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pneumonia"

# Each module may import only modules of its own layer or a lower one; a package is one layer,
# so the folders are the layers.
LAYERS = [
    {"errors", "_moved"},  # the project's errors; the old module names (issue 27)
    {"system"},  # runtime, launchers' ranks, atomic files
    {"decision", "data"},  # what probabilities mean and how good they are; images to batches
    {"config", "reports"},  # composing configs; figures and pages
    {"models"},  # the LightningModule, backbones, optimisers, callbacks, budget, checkpoint
    {"inference"},  # running a checkpoint, Grad-CAM, export
    {"evaluation"},  # scoring labelled images and reporting on them, aggregation, comparison
    {"runs"},  # run folders, resume, tracking
    {"serving"},  # a checkpoint behind HTTP: the app, its batching, its page
    {"api"},  # the Python API over the library
    {"evaluate", "predict", "export", "train", "aggregate",
     "compare", "recalibrate", "serve"},  # the commands: parse, call, write
]  # fmt: skip
COMMANDS = LAYERS[-1]


def layer_of(module: str) -> int:
    top = module.split(".")[1]  # pneumonia.<top>...
    return next(i for i, names in enumerate(LAYERS) if top in names)


def project_imports(path: Path) -> set[str]:
    """``pneumonia.*`` modules imported anywhere in the file, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    type_checking = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and ast.unparse(branch.test) == "TYPE_CHECKING"
        for node in ast.walk(branch)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("pneumonia.")}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def module_name(path: Path) -> str:
    return "pneumonia." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def test_the_top_level_holds_the_api_config_errors_and_the_commands() -> None:
    """A newcomer reads the house from its folders (issue 27): at most 12 modules directly in
    pneumonia/, the rest in role packages."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 12, top
    assert set(top) - COMMANDS <= {"api", "config", "errors", "_moved"}, top


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 300


def test_every_module_has_a_layer() -> None:
    known = set().union(*LAYERS)
    missing = [module_name(p) for p in MODULES if module_name(p).split(".")[1] not in known]
    assert not missing, f"add these modules to a layer of LAYERS: {missing}"


def test_the_api_and_the_benchmarks_import_no_command() -> None:
    """Commands parse, call and write; what they call lives in the library below them. The
    benchmark's end-to-end cases time ``pneumonia.train`` and ``pneumonia.evaluate`` as users
    run them: those two it may."""
    benchmarks = sorted((PACKAGE.parent / "benchmarks").glob("*.py"))
    timed = {"pneumonia.train", "pneumonia.evaluate"}
    allowed = {PACKAGE / "api.py": set(), **{p: timed for p in benchmarks}}
    for path, allow in allowed.items():
        commands = {m for m in project_imports(path) if m.split(".")[1] in COMMANDS} - allow
        assert not commands, f"{path.name} imports the commands {sorted(commands)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    name = module_name(path)
    higher = [m for m in project_imports(path) if layer_of(m) > layer_of(name)]
    assert not higher, f"{name} imports {higher} from a higher layer"


def test_loading_a_model_for_inference_loads_no_plotting() -> None:
    # torchmetrics imports matplotlib on its own whenever it is installed; what this project
    # controls is that its figures (pneumonia.reports.plots and mlxtend) stay out.
    code = (
        "import sys, pneumonia.models.checkpoint, pneumonia.inference.runner, "
        "pneumonia.evaluation, pneumonia.predict, pneumonia.inference.deployment, "
        "pneumonia.inference.explain, pneumonia.api\n"
        "print(sorted(m for m in ('mlxtend', 'pneumonia.reports.plots') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout
