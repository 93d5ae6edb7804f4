"""Does re-fitting on a few labelled images of a new site restore the rates planned on
validation, and how many images does it need? (issue 29; ``pneumonia.recalibrate``)

    python benchmarks/recalibration_evidence.py outputs/<run>/checkpoints/<best>.ckpt \
        [--draws 200] [--sizes 20 50 100 200] [--json out.json]

"New sites" are made from images the checkpoint never trained on: its validation split (whose
patients trained nothing, though it chose the checkpoint and the temperature) and its holdout
folder (original files of patients left out of training), delivered as another hospital's
equipment and software might deliver them. Each is written as files and read back by the
commands' own code (``pneumonia.evaluation.score``):

- ``as is``: the files themselves (the control);
- ``brighter``, ``darker``: another processing curve (gamma 0.6, 1.6);
- ``flat``: a low-contrast export (contrast 0.6);
- ``soft``: a lower-resolution detector (downsampled to 96 px, blurred, noisy);
- ``framed``: a wider field of view (the image shrunk to 80% inside a black border);
- ``equalized``: histogram equalisation;
- ``sharpened``, ``sharpened mildly``: an unsharp mask (edge enhancement, as some vendors'
  processing applies; radius 6 px at 250%, 4 px at 150%);
- ``cropped``: a narrower field of view (the middle 75%);
- ``padded``: sent square with black bars (the aspect ratio kept, where training stretched);
- ``jpeg q10``: heavy compression.

For each site: its AUROC, the rates of the stored (validation) decision and of validation's
95%-specificity threshold, and the share flagged by the shift score. Then, for each sample
size and rule, ``--draws`` random samples of the site are labelled, the rule is re-fitted on
the sample (``pneumonia.decision.recalibration.refit``, as the command does) and the rest of
the site is decided by it: the mean and 10th percentile of the rest's specificity and
sensitivity, the share of draws that reach specificity >= 0.90 with sensitivity >= 0.95, and
how often the cross-validated promise (its exact interval) held the rest's rate. Nothing here
touches the sets the project is judged on (the official test split, an adult set).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from pneumonia.data import ChestXRayDataModule
from pneumonia.decision.calibration import logit, scores_of
from pneumonia.decision.metrics import rates_at
from pneumonia.decision.recalibration import (
    check_sample,
    cross_validated,
    probabilities,
    promised_rates,
    refit,
)
from pneumonia.evaluation.scoring import score
from pneumonia.models.checkpoint import load_checkpoint


def _gamma(g: float):
    lut = [round(255 * (i / 255) ** g) for i in range(256)]
    return lambda im: im.point(lut)


def _soft(im: Image.Image) -> Image.Image:
    w, h = im.size
    small = im.resize((96, max(1, round(96 * h / w))), Image.BILINEAR)
    out = small.resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1.0))
    noise = np.random.default_rng(abs(hash(im.tobytes()[:64])) % 2**32).normal(0, 6, (h, w))
    return Image.fromarray(np.clip(np.asarray(out, np.float32) + noise, 0, 255).astype(np.uint8))


def _framed(im: Image.Image) -> Image.Image:
    w, h = im.size
    canvas = Image.new("L", (w, h), 0)
    inner = im.resize((round(w * 0.8), round(h * 0.8)), Image.BICUBIC)
    canvas.paste(inner, ((w - inner.width) // 2, (h - inner.height) // 2))
    return canvas


def _padded(im: Image.Image) -> Image.Image:
    side = max(im.size)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas


def _cropped(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.crop((round(0.125 * w), round(0.125 * h), round(0.875 * w), round(0.875 * h)))


def _jpeg(quality: int):
    def change(im: Image.Image) -> Image.Image:
        import io

        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("L")

    return change


SITES = {
    "as is": lambda im: im,
    "brighter": _gamma(0.6),
    "darker": _gamma(1.6),
    "flat": lambda im: ImageEnhance.Contrast(im).enhance(0.6),
    "soft": _soft,
    "framed": _framed,
    "equalized": ImageOps.equalize,
    "sharpened": lambda im: im.filter(ImageFilter.UnsharpMask(radius=6, percent=250, threshold=0)),
    "sharpened mildly": lambda im: im.filter(ImageFilter.UnsharpMask(radius=4, percent=150)),
    "cropped": _cropped,
    "padded": _padded,
    "jpeg q10": _jpeg(10),
}
RULES = ("temperature", "intercept", "platt", "platt at the sample's prevalence", "spec90",
         "spec95")  # fmt: skip


def write_site(files: list[Path], labels: list[str], where: Path, change) -> Path:
    for i, (f, label) in enumerate(zip(files, labels, strict=True)):
        (where / label).mkdir(parents=True, exist_ok=True)
        image = change(Image.open(f).convert("L"))
        image.save(where / label / f"{i:05d}_{f.stem}.jpeg", quality=95)
    return where


def site_scores(ckpt, root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    preds = score(ckpt, "test", device=torch.device("cpu"), precision="32-true",
                  data={"root": str(root), "cache": False})  # fmt: skip
    d = ckpt.decision
    z = scores_of(preds.probs, temperature=d.temperature,
                  reference_logit=logit(d.reference_prevalence),
                  prevalence=d.prevalence)  # fmt: skip
    none = torch.zeros(len(z), dtype=torch.bool)
    flagged = ~preds.in_distribution if preds.shift is not None else none
    return z, preds.targets.long(), flagged


def auroc(z: torch.Tensor, t: torch.Tensor) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(z.float(), t))


def draws(z, t, decision, rule: str, n: int, count: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    spec, sens, met, held, tried = [], [], 0, 0, 0
    for _ in range(count):
        order = torch.randperm(len(t), generator=g)
        pick, rest = order[:n], order[n:]
        ts = t[pick]
        tried += 1
        name, prevalence = rule, None
        if rule == "platt at the sample's prevalence":
            name, prevalence = "platt", float(ts.double().mean())
        try:
            check_sample(name, ts, ("NORMAL", "PNEUMONIA"))  # as the command refuses
            fitted = refit(z[pick], ts, decision, name, prevalence)
        except ValueError:
            continue
        r = rates_at(probabilities(z[rest], fitted), t[rest], fitted.threshold)
        spec.append(r["specificity"])
        sens.append(r["sensitivity"])
        met += r["specificity"] >= 0.90 and r["sensitivity"] >= 0.95
        folds = max(2, min(10, int((ts == 0).sum()), int((ts == 1).sum())))
        promised = promised_rates(
            cross_validated(z[pick], ts, decision, name, prevalence, folds=folds), ts
        )
        low, high = promised["specificity"]["interval"]
        held += low <= r["specificity"] <= high
    if not spec:
        return {"draws": 0, "refused": 1.0}
    s, e = np.array(spec), np.array(sens)
    return {
        "draws": len(spec), "refused": 1 - len(spec) / tried,
        "spec_mean": float(s.mean()), "spec_p10": float(np.percentile(s, 10)),
        "sens_mean": float(e.mean()), "sens_p10": float(np.percentile(e, 10)),
        "met": met / len(spec), "promise_held": held / len(spec),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--sites", nargs="+", default=list(SITES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    names = ckpt.class_names
    datamodule = ChestXRayDataModule(**ckpt.data_args, **ckpt.preprocessing.to_dict())
    datamodule.setup("fit")
    files, labels = [], []
    for split in ("val", "holdout"):
        if datamodule.has_split(split):
            listing = datamodule.listing(split)
            files += listing.files
            labels += [names[y] for y in listing.labels]
    print(f"{len(files)} images of unseen patients (validation split and holdout folder): "
          f"{labels.count(names[0])} {names[0]}, {labels.count(names[1])} {names[1]}")  # fmt: skip
    decision = ckpt.decision
    spec95 = (ckpt.thresholds or {}).get("spec95", {}).get("threshold")
    results: dict[str, object] = {"images": len(files), "sites": {}}
    print(
        "\n| site | AUROC | flagged | stored decision: spec / sens | validation's spec95 "
        "threshold: spec / sens |\n|---|---|---|---|---|"
    )
    scored = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sites:
            root = write_site(files, labels, Path(tmp) / name.replace(" ", "_"), SITES[name])
            z, t, flagged = site_scores(ckpt, root)
            scored[name] = (z, t)
            probs = probabilities(z, decision)
            stored = rates_at(probs, t, decision.threshold)
            at95 = rates_at(probs, t, spec95) if spec95 is not None else None
            row = {"auroc": auroc(z, t), "flagged": float(flagged.double().mean()),
                   "stored": stored, "spec95": at95}  # fmt: skip
            results["sites"][name] = row
            print(f"| {name} | {row['auroc']:.3f} | {row['flagged']:.1%} | "
                  f"{stored['specificity']:.3f} / {stored['sensitivity']:.3f} | "
                  + (f"{at95['specificity']:.3f} / {at95['sensitivity']:.3f} |" if at95 else "- |"),
                  flush=True)  # fmt: skip
    print(
        "\nRe-fitted on a random labelled sample of n images, decided on the rest "
        f"({args.draws} draws): specificity mean (10th percentile), sensitivity mean (10th "
        "percentile), share of draws with spec >= 0.90 and sens >= 0.95, share where the "
        "promised specificity interval held the rest's"
    )
    for name, (z, t) in scored.items() if args.draws else ():
        print(f"\n**{name}**\n\n| rule | n | refused | spec | sens | met | promise held |")
        print("|---|---|---|---|---|---|---|")
        results["sites"][name]["refit"] = {}
        for rule in RULES:
            for n in args.sizes:
                if n >= len(t) - 20:
                    continue
                r = draws(z, t, decision, rule, n, args.draws, seed=n)
                results["sites"][name]["refit"][f"{rule}@{n}"] = r
                if r["draws"]:
                    print(f"| {rule} | {n} | {r['refused']:.0%} | "
                          f"{r['spec_mean']:.3f} ({r['spec_p10']:.3f}) | "
                          f"{r['sens_mean']:.3f} ({r['sens_p10']:.3f}) | {r['met']:.0%} | "
                          f"{r['promise_held']:.0%} |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
