"""``python -m pneumonia.predict ckpt_path=... input=<image or folder>``: probabilities as CSV.

Unreadable files do not stop the run: they get a row with their error and no probability.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from pneumonia.checkpoint import LoadedCheckpoint, load_checkpoint
from pneumonia.config import CONFIG_DIR, PREDICT_RULES, check_values
from pneumonia.data.images import BadImageError, is_image_file
from pneumonia.data.index import walk_files
from pneumonia.inference import (
    PREDICTION_COLUMNS,
    adapt_to_prevalence,
    autocast,
    inference_precision,
    pneumonia_probability,
    write_predictions,
)
from pneumonia.runtime import decode_threads, resolve_device

log = logging.getLogger(__name__)


def list_inputs(path: Path) -> list[Path]:
    """One file, or every image file below a folder (sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in walk_files(path)[0] if is_image_file(p)]  # links followed
        if not files:
            raise FileNotFoundError(f"input={path} holds no image files (.jpeg, .png, ...)")
        return files
    raise FileNotFoundError(f"input={path} does not exist: pass an image file or a folder")


def predict_files(
    ckpt: LoadedCheckpoint,
    files: Sequence[Path | Image.Image],
    *,
    batch_size: int = 32,
    tta: bool = False,
    accelerator: str = "auto",
    precision: str | int = "auto",
    gradcam_dir: Path | None = None,
    root: Path | None = None,
    prior_shift: str = "none",
) -> list[dict[str, Any]]:
    """One row per input (a file, or an opened Pillow image): the calibrated PNEUMONIA
    probability and the class at the stored threshold, or why there is none.

    Rows have the keys of ``PREDICTION_COLUMNS``; probability and threshold are floats (the
    probability None for an unreadable input).
    """
    pre = ckpt.preprocessing
    fill = pre.normalized(0.0)  # the corners TTA's rotations uncover: black, as in training
    device = resolve_device(accelerator)
    precision = inference_precision(precision, device)
    model = ckpt.model.to(device).eval()
    positive, negative = ckpt.positive_index, 1 - ckpt.positive_index

    def load(item: Path | Image.Image):
        try:
            image = pre.load_image(item) if isinstance(item, Image.Image) else pre.load(item)
            return image, None
        except (BadImageError, ValueError) as e:
            return None, str(e)

    probs: dict[int, float] = {}
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=decode_threads()) as pool:
        for start in range(0, len(files), batch_size):
            chunk = range(start, min(start + batch_size, len(files)))
            loaded = dict(zip(chunk, pool.map(load, [files[i] for i in chunk]), strict=True))
            errors |= {i: err for i, (_, err) in loaded.items() if err}
            good = [(i, img) for i, (img, _) in loaded.items() if img is not None]
            if good:
                images, _ = pre.collate([(img, 0) for _, img in good])
                with autocast(device, precision):
                    p = pneumonia_probability(model, images.to(device), tta=tta, fill=fill)
                probs |= dict(zip([i for i, _ in good], p.cpu().tolist(), strict=True))
                if gradcam_dir is not None:
                    named = [(files[i], img) for i, img in good]
                    _write_gradcam(ckpt, named, images, gradcam_dir, root)
    # The prevalence is a property of the whole set of images, so it is re-based at the end.
    adapted, _ = adapt_to_prevalence(torch.tensor(list(probs.values())), ckpt.decision, prior_shift)
    probs = dict(zip(probs, adapted.tolist(), strict=True))
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(files):
        name = f"image[{i}]" if isinstance(item, Image.Image) else str(item)
        row = {**dict.fromkeys(PREDICTION_COLUMNS, ""), "file": name, "threshold": ckpt.threshold}
        if i in probs:
            predicted = ckpt.class_names[positive if probs[i] > ckpt.threshold else negative]
            row |= {"probability": probs[i], "prediction": predicted}
        else:
            row |= {"probability": None, "error": errors[i]}
        rows.append(row)
    return rows


def _write_gradcam(ckpt, good, images, out_dir: Path, root: Path | None) -> None:
    from pneumonia.explain import gradcam, overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    maps = gradcam(ckpt.model, images)
    for k, ((path, img), cam_map) in enumerate(zip(good, maps, strict=True)):
        if isinstance(path, Image.Image):
            rel = f"image_{k}"
        elif root is not None and path.is_relative_to(root):
            rel = path.relative_to(root)
        else:
            rel = path.name
        name = "__".join(Path(rel).with_suffix("").parts) + "_gradcam.png"
        Image.fromarray(np.asarray(overlay(img, cam_map))).save(out_dir / name)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``predictions.csv`` in the one layout (``inference.PREDICTION_COLUMNS``)."""
    write_predictions(path, rows)


def predict(cfg: DictConfig) -> Path:
    check_values(cfg, PREDICT_RULES)
    ckpt = load_checkpoint(cfg.ckpt_path)
    source = Path(cfg.input).expanduser()
    files = list_inputs(source)
    out_dir = Path(cfg.output_dir)
    output = out_dir / "predictions.csv"
    rows = predict_files(
        ckpt,
        files,
        batch_size=cfg.batch_size,
        tta=cfg.tta,
        accelerator=cfg.accelerator,
        precision=cfg.precision,
        gradcam_dir=out_dir / "gradcam" if cfg.gradcam else None,
        root=source if source.is_dir() else source.parent,
        prior_shift=cfg.get("prior_shift", "none"),
    )
    write_csv(rows, output)
    failed = [r for r in rows if r["error"]]
    positive = sum(r["prediction"] == ckpt.class_names[ckpt.positive_index] for r in rows)
    log.info(
        "%d images: %d predicted %s at threshold %.3f, %d unreadable. CSV: %s",
        len(rows),
        positive,
        ckpt.class_names[ckpt.positive_index],
        ckpt.threshold,
        len(failed),
        output,
    )
    for r in failed:
        log.warning("Unreadable: %s: %s", r["file"], r["error"])
    return output


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
