"""Synthetic chest-X-ray-like images for the demo and the tests (no download needed).

Not real X-rays: a body outline, two dark lung fields crossed by ribs, a spine and a heart
shadow; PNEUMONIA images add patchy opacities inside the lungs. The classes are learnable by a
small CNN in a minute on a CPU. File names follow Kermany's patient scheme, so patient-grouped
splits are exercised too.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pneumonia.errors import InputExistsError

log = logging.getLogger(__name__)

SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"
SYNTHETIC_WARNING = (
    "%s holds SYNTHETIC demo images, not real chest X-rays: its metrics say nothing about "
    "pneumonia detection."
)
GENERATOR_VERSION = 1
# (split, NORMAL images, PNEUMONIA images): about 1:2 like Kermany's training split.
DEFAULT_COUNTS = {"train": (80, 160), "val": (8, 8), "test": (40, 60)}


def render_xray(rng: np.random.Generator, height: int, width: int, pneumonia: bool) -> np.ndarray:
    """One (height, width) uint8 image of a synthetic frontal chest radiograph."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y = y / (height - 1) * 2 - 1  # [-1, 1], top to bottom
    x = x / (width - 1) * 2 - 1
    dx, dy = rng.normal(0, 0.04, size=2)
    x, y = x - dx, y - dy

    def ellipse(cx: float, cy: float, rx: float, ry: float, soft: float = 0.08) -> np.ndarray:
        r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return np.clip((1 - r) / soft, 0, 1)

    img = np.full_like(x, 0.06)
    img += 0.42 * ellipse(0, 0.12, 0.88, 1.08, soft=0.15)  # soft tissue of the trunk
    lung_r = ellipse(0.36, -0.02, 0.27 + rng.normal(0, 0.015), 0.58, soft=0.25)
    lung_l = ellipse(-0.36, -0.02, 0.27 + rng.normal(0, 0.015), 0.58, soft=0.25)
    lungs = np.maximum(lung_r, lung_l)
    img -= 0.30 * lungs  # air is dark
    for k in range(9):  # ribs: bright arcs sloping down from the spine
        y0 = -0.62 + 0.15 * k + rng.normal(0, 0.01)
        arc = y0 + 0.22 * np.abs(x) ** 1.4
        img += 0.13 * np.exp(-(((y - arc) / 0.028) ** 2)) * (np.abs(x) < 0.78)
    img += 0.28 * np.exp(-((x / 0.07) ** 2)) * (y > -0.9)  # spine
    heart = ellipse(-0.12 + rng.normal(0, 0.02), 0.3, 0.27, 0.22, soft=0.3)
    img += 0.32 * heart
    img += 0.30 * np.clip((y - 0.55) / 0.1, 0, 1) * ellipse(0, 0.12, 0.88, 1.08)  # diaphragm
    if pneumonia:
        for _ in range(rng.integers(2, 5)):
            side = rng.choice([-1, 1])
            cx = side * rng.uniform(0.2, 0.5)
            cy = rng.uniform(-0.35, 0.45)
            s = rng.uniform(0.09, 0.18)
            blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2)))
            coarse = (rng.uniform(0.3, 1.0, size=(10, 10)) * 255).astype(np.uint8)
            texture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
            patchy = np.asarray(texture, dtype=np.float32) / 255  # blotchy, not pixel noise
            img += rng.uniform(0.3, 0.45) * blob * patchy * lungs
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03)  # exposure
    img += rng.normal(0, 0.025, size=img.shape)
    pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.8)))


def _file_name(is_pneumonia: bool, patient: int, image: int, rng: np.random.Generator) -> str:
    if is_pneumonia:
        kind = "bacteria" if rng.random() < 0.65 else "virus"
        return f"person{patient}_{kind}_{image}.jpeg"
    return f"IM-{patient:04d}-{image + 1:04d}.jpeg"


def generate_synthetic_dataset(
    root: Path,
    counts: dict[str, tuple[int, int]] | None = None,
    *,
    seed: int = 0,
    min_size: int = 160,
    max_size: int = 320,
) -> Path:
    """Write ``root/{split}/{NORMAL,PNEUMONIA}/*.jpeg``; the same seed gives the same files."""
    root = Path(root)
    counts = counts or DEFAULT_COUNTS
    patient = 1000 * (seed % 7 + 1)
    for split_no, (split, per_class) in enumerate(counts.items()):
        for label, (name, n) in enumerate(zip(("NORMAL", "PNEUMONIA"), per_class, strict=True)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, split_no, label])
            written = 0
            while written < n:
                patient += 1
                for image in range(min(int(rng.integers(1, 4)), n - written)):
                    h = int(rng.integers(min_size, max_size + 1))
                    w = int(h * rng.uniform(0.8, 1.3))
                    pixels = render_xray(rng, h, w, pneumonia=bool(label))
                    im = Image.fromarray(pixels)
                    if rng.random() < 0.08:  # a few RGB files, as in the real dataset
                        im = im.convert("RGB")
                    im.save(folder / _file_name(bool(label), patient, image, rng), quality=92)
                    written += 1
    (root / SYNTHETIC_MARKER).write_text(
        "SYNTHETIC images written by pneumonia.data.synthetic "
        f"(generator v{GENERATOR_VERSION}, seed {seed}). They are not chest X-rays.\n"
    )
    return root


def ensure_synthetic_dataset(root: Path, *, seed: int = 0) -> Path:
    """Generate the demo dataset at ``root`` unless it is already there (atomically)."""
    root = Path(root)
    if (root / SYNTHETIC_MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        real = (root / "train").is_dir()  # a data set of one's own: the usual wish is to use it
        raise InputExistsError(
            f"data.synthetic=true (experiment=demo sets it) would write generated images into "
            f"{root}, which holds files of its own"
            + (
                ": it looks like a data set (it has train/). To train on it, add "
                "data.synthetic=false (python -m pneumonia.train experiment=demo "
                "data.synthetic=false data.root=...)."
                if real
                else ". "
            )
            + " For the demo's generated images instead, point data.root at an empty or new "
            "folder (or leave data.root out)."
        )
    log.warning("Generating SYNTHETIC demo data (not real X-rays) at %s", root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
    try:
        generate_synthetic_dataset(tmp, seed=seed)
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    except OSError:
        if not (root / SYNTHETIC_MARKER).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def is_synthetic(root: Path) -> bool:
    """Whether ``root`` holds the demo's synthetic images (it carries their marker file)."""
    return (Path(root) / SYNTHETIC_MARKER).exists()
