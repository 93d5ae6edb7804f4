"""``pneumonia-compare A B``: two models on the same images; is B better than A, or is the
difference noise? (``pneumonia.evaluation.comparison`` does the work.)

A and B are each a ``predictions.csv`` written by ``pneumonia-evaluate`` or a checkpoint,
which is then scored on ``--split`` (default test) of its data folder (or ``--data-root``).
Writes ``compare.json``, ``compare.md`` (and the page ``compare.html``) and
``roc_compare.png`` (and each checkpoint's ``predictions_a.csv`` / ``predictions_b.csv``) into
``--out``, by default ``outputs/compare/runs/<date>/``, and nothing when the inputs are
refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.decision.metrics import BOOTSTRAP_RESAMPLES, CONFIDENCE
from pneumonia.decision.predictions import read_predictions
from pneumonia.errors import InputNotFoundError, UserError
from pneumonia.evaluation.comparison import NAMES, Paired, compare, p_text
from pneumonia.reports.markup import md_code, md_text, md_url
from pneumonia.reports.pages import write_page
from pneumonia.runs.owners import output_folder
from pneumonia.system.files import write_text

log = logging.getLogger(__name__)
FIGURE = "roc_compare.png"


def comparison_markdown(result: dict[str, Any]) -> str:
    """``compare.md``: both models' AUROC with intervals, the difference and its tests, the
    agreement at the stored thresholds, and the figure. The models' paths, the class name and
    the files left out (with their errors) come from the user's files: :func:`md_code` and
    :func:`md_text` show them as text, never as markup (issue 28)."""
    conf, a, b = f"{result['confidence']:.0%}", *result["models"].values()
    test, boot, mc = result["delong"], result["bootstrap"], result["mcnemar"]

    def span(low: float, high: float, sign: str = "") -> str:
        return f"{low:{sign}.4f} to {high:{sign}.4f}"

    lines = ["# Comparing two models on the same images", ""]
    for name, m in result["models"].items():
        at = "several" if m["threshold"] is None else f"{m['threshold']:.4f}"
        lines.append(f"- **{name}**: {md_code(m['source'])} (stored threshold {at})")
    lines += [f"- {result['num_images']} images, {result['num_positive']} of them "
              f"{md_text(result['positive_class'])}", ""]  # fmt: skip
    if result["left_out"]:
        lines += [f"{len(result['left_out'])} image(s) with an error, left out of both:", ""]
        lines += [f"- {md_code(r['file'])} ({md_text(r['model'])}: {md_text(r['error'])})"
                  for r in result["left_out"]]  # fmt: skip
        lines.append("")
    lines += [f"**{result['summary']}**", "", "## AUROC", "",
              f"| | AUROC | {conf} CI (paired bootstrap) | {conf} CI (DeLong) |",
              "|---|---|---|---|"]  # fmt: skip
    for name, m in result["models"].items():
        lines.append(f"| {name} | {m['auroc']:.4f} | {span(*m['auroc_bootstrap_ci'])} | "
                     f"{span(*m['auroc_delong_ci'])} |")  # fmt: skip
    lines += [
        f"| B - A | {result['difference']:+.4f} | {span(boot['ci_low'], boot['ci_high'], '+')}"
        f" | {span(test['ci_low'], test['ci_high'], '+')} |",
        "",
        f"DeLong's test (Sun & Xu's algorithm): z = "
        f"{'-' if test['z'] is None else format(test['z'], '.3f')}, two-sided p "
        f"{p_text(test['p'])}. Paired bootstrap: {boot['resamples']} resamples of the images, "
        f"the same for both models (seed {boot['seed']}"
        + (f"; {boot['skipped']} without both classes skipped" if boot["skipped"] else "")
        + ").",
        "",
        "## At the stored thresholds (McNemar)",
        "",
        "| | B right | B wrong |",
        "|---|---|---|",
        f"| **A right** | {mc['both_right']} | {mc['b']} (b) |",
        f"| **A wrong** | {mc['c']} (c) | {mc['both_wrong']} |",
        "",
        f"Accuracy: A {a['accuracy']:.4f}, B {b['accuracy']:.4f}. A alone is right on "
        f"{mc['b']} image(s), B alone on {mc['c']}: McNemar's exact test p {p_text(mc['p'])}.",
        "",
        f"![ROC curves of A and B]({md_url(FIGURE)})",
        "",
    ]
    return "\n".join(lines)


def checkpoint_rows(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A checkpoint's ``predictions.csv`` rows on ``args.split``."""
    from pneumonia.evaluation import score
    from pneumonia.inference.runner import inference_precision
    from pneumonia.models.checkpoint import load_checkpoint
    from pneumonia.system.runtime import resolve_device

    ckpt = load_checkpoint(path)
    ckpt.use_max_upscale(args.max_upscale)  # None: the checkpoint's own
    device = resolve_device(args.accelerator)
    data = {"root": str(args.data_root)} if args.data_root else None
    log.info("Scoring %s on %s", path, args.split)
    preds = score(ckpt, args.split, device=device, batch_size=args.batch_size, data=data,
                  precision=inference_precision(args.precision, device))  # fmt: skip
    return preds.rows(ckpt.class_names, ckpt.positive_index)


# The options that act only on a checkpoint input (how it is scored)
CHECKPOINT_OPTIONS = ("split", "data_root", "accelerator", "precision", "batch_size",
                      "max_upscale")  # fmt: skip


def checkpoint_options_without_a_checkpoint(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[str]:
    """The checkpoint options set (``--split val`` ...) when neither input is a checkpoint:
    a setting that does nothing is an error, not a comparison of other images than meant."""
    if any(p.suffix.lower() != ".csv" for p in (args.a, args.b)):
        return []
    return [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in CHECKPOINT_OPTIONS
        if getattr(args, name) != parser.get_default(name)
    ]


def default_out() -> Path:
    root = Path(os.environ.get("PNEUMONIA_ROOT", "."))
    return root / "outputs" / "compare" / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pneumonia-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="model A: a predictions.csv or a checkpoint")
    parser.add_argument("b", type=Path, help="model B, on the same images")
    parser.add_argument("--out", type=Path, help="where to write (default: outputs/compare/...)")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES)
    parser.add_argument("--confidence", type=float, default=CONFIDENCE)
    parser.add_argument("--seed", type=int, default=0, help="of the bootstrap resamples")
    checkpoints = parser.add_argument_group("checkpoints (scored on the same images)")
    checkpoints.add_argument("--split", default="test", help="test, val, train or holdout")
    checkpoints.add_argument("--data-root", type=Path, help="default: the checkpoint's own")
    checkpoints.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    checkpoints.add_argument("--precision", default="auto")
    checkpoints.add_argument("--batch-size", type=int, default=64)
    checkpoints.add_argument("--max-upscale", type=float, default=None,
                             help="refuse images the resize would enlarge more than this "
                             "(default: each checkpoint's data.max_upscale)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.resamples < 1 or not 0 < args.confidence < 1:
        print("Error: --resamples must be at least 1 and --confidence in (0, 1).", file=sys.stderr)
        return 1
    if unused := checkpoint_options_without_a_checkpoint(parser, args):
        print(
            f"Error: {' '.join(unused)} act only on a checkpoint (.ckpt), and A and B are both "
            "predictions.csv files: leave them out, or pass a checkpoint.",
            file=sys.stderr,
        )
        return 1  # fmt: skip
    out = args.out or default_out()
    scored: dict[str, list[dict[str, Any]]] = {}  # each checkpoint's rows
    try:
        for path in (args.a, args.b):
            if not path.expanduser().exists():
                raise InputNotFoundError(
                    f"{path} does not exist: pass a predictions.csv written by "
                    "pneumonia-evaluate or a checkpoint (.ckpt) of a training run."
                )
        tables, done = [], {}  # one checkpoint given twice is scored once
        for name, path in zip(NAMES, (args.a, args.b), strict=True):
            if path.suffix.lower() == ".csv":
                tables.append(read_predictions(path))
                continue
            key = path.expanduser().resolve()
            if key not in done:
                done[key] = checkpoint_rows(path, args)
            scored[name] = done[key]
            tables.append(pd.DataFrame(done[key]))
        result, paired = compare(*tables, (args.a, args.b), resamples=args.resamples,
                                 confidence=args.confidence, seed=args.seed)  # fmt: skip
        with output_folder(out, "compare", "--out"):  # only now: a refused input leaves none
            write(result, paired, scored, out)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    mc = result["mcnemar"]
    log.info("%s\nAt the stored thresholds: A alone right on %d image(s), B alone on %d "
             "(McNemar p %s); accuracy A %.4f, B %.4f.\nWritten: %s", result["summary"],
             mc["b"], mc["c"], p_text(mc["p"]), *mc["accuracy"], out / "compare.md")  # fmt: skip
    return 0


def write(
    result: dict[str, Any], paired: Paired, scored: dict[str, list[dict[str, Any]]], out: Path
) -> None:
    """Everything into ``out``: the figure first, compare.json last (each file atomic)."""
    import torch

    from pneumonia.decision.predictions import write_predictions
    from pneumonia.reports.plots import roc_pair_figure, save_figure

    result["figure"] = FIGURE
    figure = roc_pair_figure([torch.tensor(p) for p in paired.probs],
                             torch.tensor(paired.targets), list(NAMES),
                             f"{result['num_images']} images")  # fmt: skip
    save_figure(figure, out / FIGURE)
    for name, rows in scored.items():
        write_predictions(out / f"predictions_{name.lower()}.csv", rows)
    write_text(out / "compare.md", comparison_markdown(result))
    write_page(out / "compare.md", "Comparison of two models", [FIGURE])
    write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
