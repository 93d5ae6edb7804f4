"""``python -m pneumonia.evaluate ckpt_path=...``: a checkpoint on labelled images, with a
report whose every metric has a bootstrap interval (``pneumonia.evaluation`` does the work)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pneumonia.config import CONFIG_DIR, EVALUATE_ONLY_WITH, EVALUATE_RULES, check_values
from pneumonia.decision.predictions import PREDICTIONS, write_predictions
from pneumonia.evaluation import evaluate_checkpoint, evaluation_markdown
from pneumonia.evaluation.scoring import evaluation_data
from pneumonia.inference.runner import inference_precision
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.reports.pages import write_page
from pneumonia.runs.owners import command_folder
from pneumonia.system.files import write_text
from pneumonia.system.runtime import resolve_device

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; write the report into ``cfg.output_dir``."""

    check_values(cfg, EVALUATE_RULES, EVALUATE_ONLY_WITH)
    with command_folder(cfg, "evaluate") as out:  # checked and held before any work
        return _evaluate(cfg, out)


def _evaluate(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from pneumonia.reports.plots import evaluation_figures, save_figure

    ckpt = load_checkpoint(cfg.ckpt_path)
    ckpt.use_threshold(cfg.get("threshold"))  # a named or given threshold instead of the stored
    ckpt.use_max_upscale(cfg.get("max_upscale"))  # None: the checkpoint's
    device = resolve_device(cfg.accelerator)
    result, preds = evaluate_checkpoint(
        ckpt,
        cfg.split,
        device=device,
        precision=inference_precision(cfg.precision, device),
        tta=cfg.tta,
        prior_shift=cfg.prior_shift,
        batch_size=cfg.batch_size,
        data=evaluation_data(cfg),
        prevalence=cfg.get("prevalence"),
        min_subgroup=cfg.subgroups.min_size,
        **cfg.bootstrap,
    )
    write_text(out / "report.json", json.dumps(result, indent=2) + "\n")
    write_predictions(out / PREDICTIONS, preds.rows(ckpt.class_names, ckpt.positive_index))
    figures = evaluation_figures(
        preds.probs, preds.targets, preds.threshold, ckpt.class_names, cfg.split, pr=True
    )
    if result.get("calibration"):
        from pneumonia.reports.plots import reliability_figure

        cal = result["calibration"]
        curve = {**cal["after_temperature"], "binning": cal["binning"]}
        figures["reliability"] = reliability_figure(
            curve, cfg.split, before=cal["before_temperature"], label="with temperature"
        )
    for name, fig in figures.items():
        save_figure(fig, out / f"{name}.png")
    mistakes = _confident_mistakes(ckpt, preds, cfg, device, out)
    page = evaluation_markdown(result, [f"{n}.png" for n in figures], mistakes)
    write_text(out / "report.md", page)
    written = [f"{n}.png" for n in figures] + [m["gradcam"] for m in mistakes]  # the page inlines
    write_page(out / "report.md", f"Evaluation of {Path(cfg.ckpt_path).name}", written)
    log.info("\n%s", page)
    log.info("Report (report.md, report.html), figures and predictions.csv: %s", out)
    return result


def _confident_mistakes(ckpt, preds, cfg: DictConfig, device, out: Path) -> list[dict[str, Any]]:
    """The ``cfg.mistakes`` most confident mistakes, each with its Grad-CAM written under
    ``out/mistakes/`` (the rows report.md and report.html show)."""
    picked = preds.confident_mistakes(cfg.mistakes) if cfg.mistakes and preds.files else []
    if not picked:
        return []
    from pneumonia.inference.explain import gradcam_name
    from pneumonia.inference.runner import predict_files

    files = [Path(preds.files[i]) for i in picked]
    root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
    predict_files(ckpt, files, device=device, precision=inference_precision(cfg.precision, device),
                  gradcam_dir=out / "mistakes", root=root)  # fmt: skip
    positive = ckpt.class_names[ckpt.positive_index]
    negative = ckpt.class_names[1 - ckpt.positive_index]
    return [
        {
            "file": str(f),
            "label": positive if int(preds.targets[i]) == 1 else negative,
            "probability": float(preds.probs[i]),
            "gradcam": f"mistakes/{gradcam_name(f, k, root)}",
        }
        for k, (i, f) in enumerate(zip(picked, files, strict=True))
    ]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
