"""Shared fixtures: tiny generated datasets, the real Kermany data when present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests never touch the network: torchvision / hub downloads fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
KERMANY_224 = SHARED_DATA / "kermany-224"
ORIGINALS = SHARED_DATA / "originals"

TINY_COUNTS = {"train": (10, 14), "val": (3, 3), "test": (4, 5)}


@pytest.fixture(autouse=True, scope="session")
def _no_cache_in_the_home_folder(tmp_path_factory: pytest.TempPathFactory):
    """Decoded-image caches of the tests go to a temporary folder, not ~/.cache/pneumonia
    (commands run by the tests inherit it)."""
    before = os.environ.get("PNEUMONIA_CACHE_DIR")
    os.environ["PNEUMONIA_CACHE_DIR"] = str(tmp_path_factory.mktemp("pneumonia-cache"))
    yield
    if before is None:
        del os.environ["PNEUMONIA_CACHE_DIR"]
    else:
        os.environ["PNEUMONIA_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention synthetic dataset shared by the session (copy it to modify)."""
    from pneumonia.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "chest_xray"
    return generate_synthetic_dataset(root, TINY_COUNTS, seed=1, min_size=48, max_size=72)


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(tiny_root, dst)
    return dst


@pytest.fixture
def kermany_224() -> Path:
    if not (KERMANY_224 / "train").is_dir():
        pytest.skip(f"real Kermany data not found at {KERMANY_224}")
    return KERMANY_224


@pytest.fixture
def originals() -> Path:
    if not (ORIGINALS / "NORMAL").is_dir():
        pytest.skip(f"real Kermany originals not found at {ORIGINALS}")
    return ORIGINALS


def tiny_overrides(
    tmp_path: Path, data_root: Path, *extra: str, figures: bool = False
) -> list[str]:
    """Command-line overrides for a CPU run on tiny images, writing under tmp_path, then
    ``extra``. A base override that ``extra`` leaves without effect is left out (a run refuses
    a setting that does nothing): the checks' resamples without the checks, the validation
    fraction with folds.

    Without ``figures``, no TensorBoard figures at every validation (the evaluation_figures
    callback: about half a second an epoch, a sixth of a tiny run); the tests of those figures
    ask for them.
    """
    base = [
        *([] if figures else ["~callbacks.evaluation_figures"]),
        "experiment=demo",
        f"paths.root_dir={tmp_path}",
        f"data.root={data_root}",
        "data.synthetic=false",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.resize_size=40",
        "data.crop_size=32",
        "data.batch_size=8",
        "data.val_fraction=0.3",
        "model.weights=null",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        # Tests compare numbers between runs: pinned, so that every CPU kind computes the same
        # (precision auto picks bf16-mixed on some CPUs and 32-true on others).
        "trainer.precision=32-true",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
        # The checks after training bootstrap 7 intervals; 1,000 resamples each (torchmetrics'
        # BootStrapper: 1,000 metric copies) took 40% of a tiny run. 100 still draw an interval.
        "checks.resamples=100",
    ]
    dead = {"checks.resamples": "checks.enabled=false", "data.val_fraction": "data.folds=",
            "data.cache_dir": "data.cache=false"}  # fmt: skip
    base = [
        o for o in base
        if not any(o.startswith(key) and any(e.lower().startswith(by) for e in extra)
                   for key, by in dead.items())
    ]  # fmt: skip
    return [*base, *extra]


def compose_train_cfg(tmp_path: Path, data_root: Path, *overrides: str, figures: bool = False):
    """The real train config, overridden for a CPU, tiny images and tmp_path outputs."""
    from pneumonia.config import compose

    overrides = tiny_overrides(tmp_path, data_root, *overrides, figures=figures)
    return compose("train", overrides, output_dir=tmp_path / "run")


@pytest.fixture
def train_cfg(tmp_path: Path, tiny_root: Path):
    """Factory: ``train_cfg(*overrides)`` -> a composed config writing under tmp_path."""
    return lambda *overrides: compose_train_cfg(tmp_path, tiny_root, *overrides)


@pytest.fixture(scope="session")
def forty_test_images(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder of 36 images (the tiny test split four times): enough for prior_shift=em
    (which refuses fewer than 30)."""
    import shutil

    folder = tmp_path_factory.mktemp("forty")
    for source in sorted((tiny_root / "test").rglob("*.jpeg")):
        (folder / source.parent.name).mkdir(exist_ok=True)
        for k in range(4):
            shutil.copy(source, folder / source.parent.name / f"{source.stem}_copy{k}.jpeg")
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> dict:
    """One tiny demo run shared by the session: its metrics, run dir and best checkpoint."""
    import warnings

    from pneumonia.train import train

    tmp = tmp_path_factory.mktemp("trained")
    cfg = compose_train_cfg(tmp, tiny_root, "trainer.max_epochs=2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metrics = train(cfg)
    return {
        "metrics": metrics,
        "run": Path(cfg.paths.output_dir),
        "ckpt": Path(metrics["best_model_path"]),
        "root": tiny_root,
        "tmp": tmp,
    }


def run_command(module: str, argv: list[str]) -> tuple[int, str]:
    """``python -m pneumonia.<module> argv`` in this process (seconds faster than a
    subprocess, which imports torch again): its exit status and what it wrote to stderr."""
    import contextlib
    import importlib
    import io
    import sys

    main = importlib.import_module(f"pneumonia.{module}").main
    err = io.StringIO()
    code = 0
    old = sys.argv
    sys.argv = [module, *argv]
    try:
        with contextlib.redirect_stderr(err):
            try:
                returned = main(argv) if module in ("aggregate", "compare") else main()
                code = returned or 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return code, err.getvalue()


# ------------------------------------------------------------- a real browser (Debian's Chromium)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAPTOP = {"width": 1280, "height": 800}
# Chromium as root on a closed network: no sandbox, no background connections
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright; skipped where Chromium is absent (CI installs it)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium not found: sudo apt-get install chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()
