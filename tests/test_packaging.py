"""The wheel carries the configs and the console scripts (CI also installs and runs it)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import REPO_ROOT


def test_the_wheel_ships_every_module_config_and_the_four_commands(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(REPO_ROOT),
        ],  # fmt: skip
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("pneumonia-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"pneumonia/conf/{p.relative_to(REPO_ROOT / 'conf')}"
        for p in (REPO_ROOT / "conf").rglob("*.yaml")
    }
    assert configs <= names, sorted(configs - names)
    modules = {
        str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "pneumonia").rglob("*.py")
    }  # every module, subpackages included (a package left out of pyproject is not shipped)
    assert modules <= names, sorted(modules - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("train", "evaluate", "predict", "export", "aggregate", "compare"):
        assert f"pneumonia-{command} = pneumonia.{command}:main" in text
    import pneumonia  # the version is written once, in the package, and the wheel carries it

    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert f"\nVersion: {pneumonia.__version__}\n" in zipfile.ZipFile(wheel).read(metadata).decode()
