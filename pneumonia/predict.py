"""``python -m pneumonia.predict ckpt_path=... input=<image or folder>``: probabilities as CSV.

Unreadable files do not stop the run: they get a row with their error and no probability.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pneumonia.config import CONFIG_DIR, PREDICT_RULES, check_values
from pneumonia.data.walk import list_images
from pneumonia.decision.predictions import PREDICTIONS, write_predictions
from pneumonia.inference.runner import inference_precision, predict_files
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.runs.owners import command_folder
from pneumonia.system.runtime import resolve_device

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.input``; write ``predictions.csv`` (and ``gradcam/``) into
    ``cfg.output_dir`` (else the run folder) and return the CSV's path."""
    check_values(cfg, PREDICT_RULES)
    with command_folder(cfg, "predict") as out:  # checked and held before any work
        return _predict(cfg, out)


def _predict(cfg: DictConfig, out: Path) -> Path:
    ckpt = load_checkpoint(cfg.ckpt_path)
    ckpt.use_threshold(cfg.get("threshold"))  # a named or given threshold instead of the stored
    ckpt.use_max_upscale(cfg.get("max_upscale"))  # None: the checkpoint's
    source = Path(cfg.input).expanduser()
    files = list_images(source)
    device = resolve_device(cfg.accelerator)
    gradcam_dir = out / "gradcam" if cfg.gradcam else None
    rows = predict_files(
        ckpt,
        files,
        device=device,
        precision=inference_precision(cfg.precision, device),
        batch_size=cfg.batch_size,
        tta=cfg.tta,
        prior_shift=cfg.prior_shift,
        gradcam_dir=gradcam_dir,
        root=source if source.is_dir() else source.parent,
    )
    output = out / PREDICTIONS
    write_predictions(output, rows)
    failed = [r for r in rows if r["error"]]
    positive = ckpt.class_names[ckpt.positive_index]
    log.info(
        "%d images: %d predicted %s at threshold %.3f, %d unreadable. CSV: %s",
        len(rows),
        sum(r["prediction"] == positive for r in rows),
        positive,
        ckpt.threshold,
        len(failed),
        output,
    )
    log.info("Decision: %s", ckpt.decision.describe())
    for r in failed:
        log.warning("Unreadable: %s: %s", r["file"], r["error"])
    if gradcam_dir is not None:
        log.info("Grad-CAM overlays: %s", gradcam_dir)
    return output


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
