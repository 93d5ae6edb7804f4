"""``python -m pneumonia.recalibrate ckpt_path=... data.root=<a site's labelled images>``: the
checkpoint's decision re-fitted on a new site's labelled images, written as a new checkpoint
(``pneumonia.decision.recalibration`` does the fitting). The original is only read."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pneumonia.config import CONFIG_DIR, RECALIBRATE_RULES, check_values
from pneumonia.data import ChestXRayDataModule
from pneumonia.data.leakage import EXAMPLES, file_hashes, find_leaks
from pneumonia.data.table import SplitListing
from pneumonia.decision.calibration import logit, scores_of
from pneumonia.decision.predictions import Predictions
from pneumonia.decision.prior_shift import class_probabilities, warn_if_unlike_training
from pneumonia.decision.recalibration import (
    check_sample,
    describe_refit,
    probabilities,
    refit,
    refit_record,
    wide_promises,
)
from pneumonia.decision.rules import operating_thresholds, uncertain_thresholds
from pneumonia.errors import InputValueError
from pneumonia.evaluation.scoring import evaluation_data, score
from pneumonia.inference.runner import inference_precision
from pneumonia.models.checkpoint import LoadedCheckpoint, load_checkpoint, write_refitted
from pneumonia.reports.markup import md_code, md_text
from pneumonia.reports.pages import write_page
from pneumonia.runs.owners import command_folder
from pneumonia.system.files import write_text
from pneumonia.system.runtime import resolve_device

log = logging.getLogger(__name__)


def recalibrate(cfg: DictConfig) -> Path:
    """Re-fit ``cfg.ckpt_path``'s decision on ``cfg.data``'s labelled images; write the new
    checkpoint, ``recalibration.json`` and ``report.md`` into ``cfg.output_dir`` (else the run
    folder) and return the new checkpoint's path."""
    check_values(cfg, RECALIBRATE_RULES)
    if OmegaConf.is_missing(cfg.data, "root") or not cfg.data.root:
        raise InputValueError(
            "pneumonia-recalibrate needs the site's labelled images: data.root=/path/to/folder "
            "(with NORMAL/ and PNEUMONIA/ in it), or data=manifest data.root=... with a label "
            "file. It never re-fits on the training run's own data."
        )
    with command_folder(cfg, "recalibrate") as out:  # checked and held before any work
        return _recalibrate(cfg, out)


def _recalibrate(cfg: DictConfig, out: Path) -> Path:
    ckpt = load_checkpoint(cfg.ckpt_path)
    ckpt.use_max_upscale(cfg.get("max_upscale"))
    negative, positive = (ckpt.class_names[1 - ckpt.positive_index],
                          ckpt.class_names[ckpt.positive_index])  # fmt: skip
    device = resolve_device(cfg.accelerator)
    data = evaluation_data(cfg)
    preds = score(ckpt, "test", device=device, precision=inference_precision(cfg.precision, device),
                  batch_size=cfg.batch_size, data=data)  # fmt: skip
    check_sample(cfg.rule, preds.targets, (negative, positive))
    site = _listing(preds)
    hashes = {str(f.resolve()): h for f, h in file_hashes(site.files).items()}  # read once
    _refuse_two_labels(site, hashes)
    _refuse_training_images(ckpt, site, hashes)
    flagged = None
    if ckpt.shift is not None and preds.shift is not None:
        count = int((~preds.in_distribution).sum())
        warn_if_unlike_training(count, len(preds.shift), ckpt.shift)  # as evaluate says it
        flagged = count / len(preds.shift)
    before = ckpt.decision
    scores = scores_of(preds.probs, temperature=before.temperature,
                       reference_logit=logit(before.reference_prevalence),
                       prevalence=before.prevalence)  # fmt: skip
    prevalence = cfg.prevalence
    if prevalence is None:  # the default, on evidence (benchmarks/RESULTS.md)
        prevalence = min(max(float(preds.targets.double().mean()), 0.01), 0.99)
        log.info(
            "The re-fitted probabilities are for a %s prevalence of %.3f, the share of these "
            "labelled images: right when they are a random sample of the site's images. For a "
            "chosen sample (say, as many of each class), give the site's prevalence=...",
            positive, prevalence,
        )  # fmt: skip
    fitted = refit(scores, preds.targets, before, cfg.rule, prevalence)
    record = refit_record(
        scores, preds.targets, before, fitted,
        rule=cfg.rule, classes=(negative, positive), source=_source(cfg, data),
        original=str(ckpt.path.resolve()), date=datetime.date.today().isoformat(),
        flagged_share=flagged, prevalence=prevalence, folds=cfg.folds, seed=cfg.seed,
    )  # fmt: skip
    refit_dict = record.to_dict()
    probs = probabilities(scores, fitted).float()
    thresholds = operating_thresholds(probs, preds.targets)
    for warning in (wide_promises(record), uncertain_thresholds(thresholds, (negative, positive))):
        if warning:
            log.warning("%s", warning)
    dest = out / "checkpoints" / f"{ckpt.path.stem}-recalibrated.ckpt"
    write_refitted(ckpt.path, dest, fitted, thresholds=thresholds, recalibration=refit_dict,
                   class_probabilities=class_probabilities(probs, preds.targets))  # fmt: skip
    summary = {"checkpoint": str(dest), "decision": fitted.to_dict(),
               "recalibration": refit_dict, "thresholds": thresholds}  # fmt: skip
    write_text(out / "recalibration.json", json.dumps(summary, indent=2) + "\n")
    page = _markdown(refit_dict, before, fitted.threshold, dest)
    write_text(out / "report.md", page)
    write_page(out / "report.md", f"Re-fit of {ckpt.path.name}", [])
    log.info("%s", describe_refit(refit_dict))
    log.info("The re-fitted checkpoint: %s (the original, %s, is unchanged)", dest, ckpt.path)
    return dest


def _listing(preds: Predictions) -> SplitListing:
    """The scored images as a listing (their patient ids for the checks below)."""
    attributes = pd.DataFrame(preds.attributes) if preds.attributes else None
    return SplitListing(list(preds.files), preds.targets.tolist(), attributes=attributes)


def _refuse_two_labels(site: SplitListing, hashes: dict[str, str]) -> None:
    """One image (the same bytes) under both classes cannot teach a decision either way."""
    by_class = {c: site.take([i for i, y in enumerate(site.labels) if y == c]) for c in (0, 1)}
    both = find_leaks(by_class, [(0, 1)], hashes)[0].duplicates
    if both:
        examples = "\n".join(f"  {a}  ==  {b}" for a, b in both[:EXAMPLES])
        raise InputValueError(
            f"{len(both)} image(s) are labelled both ways (the same file content under both "
            f"classes), e.g.\n{examples}\nKeep each image under its one true class."
        )


def _refuse_training_images(
    ckpt: LoadedCheckpoint, site: SplitListing, hashes: dict[str, str]
) -> None:
    """Refuse images the checkpoint was trained or validated on (the same bytes), and warn
    about patients whose ids its training images share: a decision re-fitted on them would be
    fitted on what the model already knows. Said, not checked, where the training data is not
    on this machine."""
    root = ckpt.data_args.get("root")
    if not root or not Path(root).expanduser().exists():
        log.warning(
            "The training data of %s (%s) is not on this machine: whether any of these images "
            "trained it cannot be checked. Re-fit only on images the model never saw.",
            ckpt.path.name, root,
        )  # fmt: skip
        return
    args = {k: v for k, v in ckpt.data_args.items() if k not in ("synthetic",)}
    index = ChestXRayDataModule(**args, **ckpt.preprocessing.to_dict()).listed()
    trained = [index.splits[s] for s in ("train", "val") if s in index.splits]
    # Only a file of the same size can hold the same bytes: the rest are never read.
    sizes = {f.stat().st_size for f in site.files}
    alike = [f for listing in trained for f in listing.files if f.stat().st_size in sizes]
    pair = [("site", "trained")]
    same = find_leaks({"site": site.files, "trained": alike}, pair, hashes)[0].duplicates
    if same:
        examples = "\n".join(f"  {a}  ==  {b}" for a, b in same[:EXAMPLES])
        raise InputValueError(
            f"{len(same)} of these images are images of the training data of {ckpt.path.name} "
            f"({root}), e.g.\n{examples}\nA decision re-fitted on images the model was trained "
            "or validated on promises nothing about new ones: re-fit on the site's own images."
        )
    theirs = {p for listing in trained for p in listing.patient_ids}
    patients = sorted({p for p in site.patient_ids if p in theirs and not p.startswith("file:")})
    if patients:
        log.warning(
            "%d patient id(s) of these images are also in the training data of %s (e.g. %s): "
            "if they are the same patients, the re-fitted decision is optimistic.",
            len(patients), ckpt.path.name, ", ".join(patients[:EXAMPLES]),
        )  # fmt: skip


def _source(cfg: DictConfig, data: dict[str, Any] | None) -> str:
    root = str(Path((data or {}).get("root") or "").expanduser().resolve())
    table = (data or {}).get("table")
    if table and table.get("reader") not in (None, "folders"):
        return f"{root} ({table.get('reader')} table)"
    return root


def _markdown(record: dict[str, Any], before, threshold: float, dest: Path) -> str:
    rows = [
        f"| {md_text(rate)} | {e['value']:.3f} | {e['interval'][0]:.3f}-{e['interval'][1]:.3f} "
        f"| {e['images']} | {record['in_sample'][rate]:.3f} |"
        for rate, e in record["promised"].items()
    ]
    flagged = record["flagged_share"]
    return "\n".join([
        f"# Re-fitted decision: {md_code(dest.name)}",
        "",
        f"- From {md_code(record['original'])} (unchanged), rule {md_code(record['rule'])}, on "
        + ", ".join(f"{n} {md_text(c)}" for c, n in record["images"].items())
        + f" images of {md_code(record['source'])} ({record['date']}).",
        f"- Before: threshold {before.threshold:.3f} (rule {md_text(str(before.threshold_rule))}),"
        f" temperature {before.temperature:.3f}. Now: threshold {threshold:.3f}, probabilities "
        f"for a PNEUMONIA prevalence of {record['prevalence']:g} (these images: "
        f"{record['sample_prevalence']:.3f}).",
        (f"- {flagged:.0%} of these images were flagged as unlike the training images."
         if flagged is not None else "- This checkpoint has no shift reference."),
        "",
        "| rate | promised on this site | interval | images | on the images that fitted it |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Promised: {md_text(record['method'])}. Use the new checkpoint with evaluate, predict, "
        "export and the API as any other; they show this record.",
        "",
    ])  # fmt: skip


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="recalibrate")
def main(cfg: DictConfig) -> None:
    recalibrate(cfg)


if __name__ == "__main__":
    main()
