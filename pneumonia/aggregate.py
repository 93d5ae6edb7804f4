"""``pneumonia-aggregate <sweep folder>``: one table of a sweep's jobs (folds, seeds,
settings), each metric as mean, standard deviation and a 95% t-interval over the jobs of one
setting (``pneumonia.runs.aggregation`` does the work).

Writes ``aggregate.md`` (and the page ``aggregate.html``), ``aggregate.csv``,
``aggregate.json``, the out-of-fold figures of a k-fold and a TensorBoard log
(``tensorboard/``) into the sweep folder (or ``--out``); with ``--mlflow URI``, the same to an
MLflow store or server (``pneumonia.runs.tracking``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pneumonia.errors import UserError
from pneumonia.reports.markup import md_code, md_text, md_url
from pneumonia.reports.pages import write_page
from pneumonia.runs.aggregation import CONFIDENCE, aggregate
from pneumonia.system.files import write_text
from pneumonia.system.sheets import sheet_text

log = logging.getLogger(__name__)
# What aggregate.md shows by default (aggregate.csv has every number of metrics.json).
SHOWN = ("val/", "test/", "checks.")


def aggregate_markdown(result: dict[str, Any], shown: Sequence[str] = SHOWN) -> str:
    """``aggregate.md``; the folder, job and setting names (from the sweep's folders and
    overrides) through :func:`md_code` and :func:`md_text`, shown as text and never as markup
    (issue 28)."""
    conf = f"{result['confidence']:.0%}"
    lines = [f"# Aggregate of {md_code(result['folder'])}", ""]
    if result["unfinished"]:
        lines += [f"{len(result['unfinished'])} job(s) without metrics.json, left out:", ""]
        lines += [f"- {md_code(job)}: {md_text(why)}" for job, why in result["unfinished"].items()]
        lines.append("")
    for group in result["groups"]:
        setting = ", ".join(md_code(f"{k}={v}") for k, v in group["setting"].items()) or "all jobs"
        lines += [f"## {setting}", "", f"{len(group['jobs'])} job(s).", "",
                  f"| metric | n | mean | std | {conf} CI |", "|---|---|---|---|---|"]  # fmt: skip
        for name, m in group["metrics"].items():
            if name.startswith(tuple(shown)):
                lines.append(f"| {md_text(name)} | {m['n']} | {m['mean']:.4f} | {m['std']:.4f} | "
                             f"{m['ci_low']:.4f} - {m['ci_high']:.4f} |")  # fmt: skip
        lines.append("")
        if missing := group.get("without_predictions"):
            lines += [f"No out-of-fold figures from {len(missing)} fold job(s) without "
                      "val_predictions.csv (trained with checks.enabled=false, which skips "
                      "scoring each validation image): " + ", ".join(md_code(j) for j in missing),
                      ""]  # fmt: skip
        oof = group.get("out_of_fold")
        if oof:
            lines += ["Out of fold (each image scored by the fold that did not train on it):", ""]
            for seed, s in oof["seeds"].items():
                (tn, fp), (fn, tp) = s["confusion_matrix"]
                lines.append(f"- seed {md_text(seed) or '-'}: {s['num_images']} images, AUROC "
                             f"{s['auroc']:.4f}; at the stored thresholds TN {tn}, FP {fp}, "
                             f"FN {fn}, TP {tp}")  # fmt: skip
            a, e = oof["auroc"], oof["ece"]
            binning = next(iter(oof["seeds"].values()))["calibration"]["binning"]
            lines += [f"- AUROC over {a['n']} seed(s): {a['mean']:.4f} ({conf} CI "
                      f"{a['ci_low']:.4f} - {a['ci_high']:.4f})",
                      f"- ECE ({binning}) over {e['n']} seed(s): {e['mean']:.4f} ({conf} CI "
                      f"{e['ci_low']:.4f} - {e['ci_high']:.4f})", ""]  # fmt: skip
        lines += [f"![{md_text(f)}]({md_url(f)})" for f in group.get("figures", [])] + [""]
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    """``aggregate.csv``: a row per setting and metric. The settings' keys and values and the
    metric names are text from the sweep's folders: none is written as a formula a
    spreadsheet would run (:func:`~pneumonia.system.sheets.sheet_text`); the numbers stay
    numbers."""
    keys = sorted({k for g in result["groups"] for k in g["setting"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*map(sheet_text, keys), "metric", "n", "mean", "std", "ci_low", "ci_high"])
    for group in result["groups"]:
        setting = [sheet_text(str(group["setting"].get(k, ""))) for k in keys]
        for name, m in group["metrics"].items():
            writer.writerow([*setting, sheet_text(name), m["n"], m["mean"], m["std"], m["ci_low"],
                             m["ci_high"]])  # fmt: skip
    return out.getvalue()


def log_to_tensorboard(result: dict[str, Any], folder: Path, page: str) -> Path:
    """The aggregate as TensorBoard scalars (``<setting>/<metric>/mean``, ``.../ci_low``,
    ``.../ci_high``) and the page as text, under ``folder/tensorboard``."""
    from torch.utils.tensorboard import SummaryWriter

    logdir = folder / "tensorboard"
    with SummaryWriter(str(logdir)) as writer:
        writer.add_text("aggregate", page)
        for group in result["groups"]:
            setting = ",".join(f"{k}={v}" for k, v in group["setting"].items()) or "all"
            for name, m in group["metrics"].items():
                for stat in ("mean", "ci_low", "ci_high"):
                    writer.add_scalar(f"{setting}/{name}/{stat}", m[stat], 0)
            if group.get("out_of_fold"):
                writer.add_scalar(
                    f"{setting}/out_of_fold/auroc", group["out_of_fold"]["auroc"]["mean"], 0
                )
    return logdir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pneumonia-aggregate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("folder", type=Path, help="a sweep (multirun) folder")
    parser.add_argument("--out", type=Path, help="where to write (default: the sweep folder)")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE)
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log to MLflow's pneumonia-aggregate experiment, e.g. "
        "sqlite:///outputs/mlflow.db (logger=mlflow's store) or http://host:5000",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.mlflow:
        from pneumonia.runs.tracking import require_mlflow

        try:
            require_mlflow()
        except ModuleNotFoundError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 1
    try:
        out = args.out or args.folder
        result = aggregate(args.folder, args.confidence, figures=out)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    write_text(out / "aggregate.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "aggregate.csv", table(result))
    page = aggregate_markdown(result)
    write_text(out / "aggregate.md", page)
    figures = [name for g in result["groups"] for name in g.get("figures", [])]
    write_page(out / "aggregate.md", f"Aggregate of {args.folder}", figures)
    logdir = log_to_tensorboard(result, out, page)
    log.info("%s\nWritten: %s (TensorBoard: %s)", page, out / "aggregate.md", logdir)
    if args.mlflow:
        from pneumonia.runs.tracking import log_aggregate

        files = [out / f"aggregate.{ext}" for ext in ("md", "csv", "json")]
        files += [out / name for g in result["groups"] for name in g.get("figures", [])]
        run = log_aggregate(result, args.mlflow, files, args.folder.resolve().name)
        log.info("MLflow: run %s in %s", run, args.mlflow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
