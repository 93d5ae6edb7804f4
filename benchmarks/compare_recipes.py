"""Compare training recipes on the checks that do not saturate, over repeated patient splits.

Each recipe is a list of Hydra overrides on top of ``experiment=kermany_cpu``; each seed draws
another patient-grouped validation split (the split hashes the seed with the patient id) and
another initialisation. For every recipe the table gives the mean over seeds and, with two or
more seeds, a 95% t-interval over them, of:

- validation AUROC and NLL (patient-grouped split of the training collection);
- the mean over the degraded validations (pneumonia/evaluation/generalisation.py);
- the holdout folder (``--holdout``): patients never trained on, from their original files.

    python benchmarks/compare_recipes.py --data ../shared/data/kermany-224 \\
        --holdout ../shared/data/originals --epochs 8 --seeds 1 2 3 -- trainer.accelerator=gpu

Recipes are chosen on these figures only: the official test split stays out of it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pneumonia.runs.aggregation import mean_interval

REPO = Path(__file__).resolve().parents[1]

LITE0 = ["model=efficientnet_lite0", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"]
ACQUISITION = [
    "data.crop=random_resized",
    "data.augment.crop_scale=0.7",
    "data.augment.brightness=0.2",
    "data.augment.contrast=0.2",
    "data.augment.gamma=0.3",
    "data.augment.blur_prob=0.3",
    "data.augment.noise_std=0.02",
]
RECIPES: dict[str, list[str]] = {
    # kermany_cpu as it was: ResNet18 from scratch, aspect kept, center part of the image.
    "resnet18_scratch": ["data.resize_mode=shorter"],
    "resnet18_scratch_square": ["data.resize_mode=square"],
    "resnet18_scratch_square_acq": ["data.resize_mode=square", *ACQUISITION],
    "lite0_scratch_square": ["data.resize_mode=square", *LITE0, "model.weights=null"],
    "lite0_imagenet_square": ["data.resize_mode=square", *LITE0, "model.lr=1e-3"],
    "lite0_imagenet_square_acq": ["data.resize_mode=square", *LITE0, "model.lr=1e-3", *ACQUISITION],
    "lite0_imagenet_shorter_acq": [
        "data.resize_mode=shorter",
        *LITE0,
        "model.lr=1e-3",
        *ACQUISITION,
    ],
}
COLUMNS = {
    "val AUROC": ("val", "auroc"),
    "val NLL": ("val", "nll"),
    "degraded AUROC": ("val_degraded_mean", "auroc"),
    "degraded NLL": ("val_degraded_mean", "nll"),
    "holdout AUROC": ("holdout", "auroc"),
    "holdout NLL": ("holdout", "nll"),
    "holdout acc": ("holdout", "accuracy"),
    "holdout sens": ("holdout", "sensitivity"),
    "holdout spec": ("holdout", "specificity"),
}


def run(recipe: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / f"{recipe}_seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and not args.rerun:
        return json.loads(metrics_file.read_text())
    if args.table_only:
        return {}
    overrides = [
        "experiment=kermany_cpu",
        f"data.root={args.data}",
        f"seed={seed}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.max_time=null",
        "test=false",
        "logger=csv",
        "callbacks.evaluation_figures=null",
        "callbacks.sample_grid=null",
        f"hydra.run.dir={run_dir}",
        *([f"data.holdout_root={args.holdout}"] if args.holdout else []),
        *RECIPES[recipe],
        *args.overrides,
    ]
    start = time.perf_counter()
    log = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "pneumonia.train", *overrides],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        print(f"FAILED {recipe} seed {seed}: see {log}", flush=True)
        return {}
    metrics = json.loads(metrics_file.read_text())
    metrics["wall_s"] = time.perf_counter() - start
    metrics_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    m = mean_interval(values)  # the 95% t-interval pneumonia-aggregate reports
    if len(values) < 2:
        return f"{m['mean']:.3f}"
    return f"{m['mean']:.3f} ± {(m['ci_high'] - m['ci_low']) / 2:.3f}"


def table(results: dict[str, list[dict]]) -> str:
    head = ["recipe", "seeds", *COLUMNS, "wall s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for recipe, runs in results.items():
        cells = [recipe, str(len(runs))]
        for section, key in COLUMNS.values():
            cells.append(
                cell(
                    [r["checks"][section][key] for r in runs if key in r["checks"].get(section, {})]
                )
            )
        cells.append(f"{statistics.fmean(r.get('wall_s', math.nan) for r in runs):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data root with train/ (and val/)")
    parser.add_argument("--holdout", help="labelled folder of patients kept out of training")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "compare_recipes")
    parser.add_argument("--rerun", action="store_true", help="ignore finished runs in --out")
    parser.add_argument("--table-only", action="store_true", help="tabulate finished runs only")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            metrics = run(recipe, seed, args, args.out)
            if metrics:
                results.setdefault(recipe, []).append(metrics)
                print(f"done {recipe} seed {seed}", flush=True)
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
