"""How well each shift score tells images unlike the training images from the validation images.

    python benchmarks/shift_evidence.py outputs/<run>/checkpoints/<best>.ckpt [--json out.json]

For a trained checkpoint (its data folder and holdout folder as the run recorded them), every
method of ``pneumonia.decision.shift`` is fitted on the training images' features, its
threshold set to flag 5% of the validation images; then each set of shifted images made here
from what the project has is scored:

- inverted X-rays (a MONOCHROME1 export read as MONOCHROME2), X-rays turned by 90 degrees, a
  heavy crop (the middle 40%, blown up), text-only images, photographs (scikit-image's), and
  the synthetic demo images: all should be flagged;
- the validation images under the checks' acquisition changes (gamma, contrast, blur, noise,
  half resolution) and the holdout folder's original files: mild shifts, which should mostly
  stay in distribution.

It prints, per method and set, the AUROC of telling the set from the validation images by the
score, and the share of the set flagged. Nothing here is used to choose anything on the sets
the project is judged on (the official test split, an adult set): those stay outside.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pneumonia.data import ChestXRayDataModule, generate_synthetic_dataset
from pneumonia.data.images import BadImageError, load_gray
from pneumonia.decision.shift import METHODS, reference_from_features, separation_auroc
from pneumonia.evaluation.generalisation import DEGRADATIONS, degrade
from pneumonia.models.checkpoint import load_checkpoint

PHOTOGRAPHS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
    "clock",
    "grass",
    "gravel",
    "brick",
)


@torch.inference_mode()
def features_of(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and logits of every batch of normalised images."""
    feats, logits = [], []
    for images in batches:
        f = model.features(images)
        feats.append(f.float())
        logits.append(model.head(f).float())
    return torch.cat(feats), torch.cat(logits)


def batches_of(tensors: list[torch.Tensor], pre, size: int = 64):
    for start in range(0, len(tensors), size):
        yield pre.collate([(t, 0) for t in tensors[start : start + size]])[0]


def shifted_sets(files: list[Path], pre, work: Path) -> dict[str, list[torch.Tensor]]:
    """Each shifted set, as the model's uint8 inputs (1, crop, crop)."""
    grays = [load_gray(f, pre.max_pixels) for f in files]

    def inputs(arrays) -> list[torch.Tensor]:
        """The model's inputs of those the preprocessing accepts (its own size rule); the
        refused ones are counted, not dropped silently."""
        loaded, refused = [], 0
        for a in arrays:
            try:
                loaded.append(pre.load_image(Image.fromarray(np.ascontiguousarray(a))))
            except BadImageError:
                refused += 1
        if refused:
            print(f"{refused} images refused by the preprocessing (too small)", file=sys.stderr)
        return loaded

    def crop(a: np.ndarray) -> np.ndarray:  # the middle 40%, blown up to the image's size
        h, w = a.shape
        middle = Image.fromarray(a[int(0.3 * h) : int(0.7 * h), int(0.3 * w) : int(0.7 * w)])
        return np.asarray(middle.resize((w, h), Image.Resampling.BICUBIC))

    sets = {
        "inverted": inputs(255 - g for g in grays),
        "rotated 90 degrees": inputs(np.rot90(g) for g in grays),
        "heavy crop (middle 40%)": inputs(crop(g) for g in grays),
    }
    texts = []
    for i in range(40):
        im = Image.new("L", (400, 400), 255 if i % 2 else 0)
        draw = ImageDraw.Draw(im)
        for line in range(12):
            draw.text((20, 20 + 30 * line), f"Report {i}-{line}: no acute findings", fill=128)
        texts.append(np.asarray(im))
    sets["text only"] = inputs(texts)
    try:
        from skimage import data as skimage_data

        photos = []
        for name in PHOTOGRAPHS:
            image = getattr(skimage_data, name, None)
            if image is not None:
                photos.append(np.asarray(Image.fromarray(image()).convert("L")))
        sets["photographs"] = inputs(photos)
    except ImportError:
        print("scikit-image is not installed: no photographs", file=sys.stderr)
    demo = generate_synthetic_dataset(work / "demo", {"test": (40, 40)}, seed=3)
    sets["synthetic demo images"] = [pre.load(f) for f in sorted(demo.rglob("*.jpeg"))]
    return sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--json", default=None)
    p.add_argument("--max-val", type=int, default=500)
    a = p.parse_args()
    torch.manual_seed(0)
    ckpt = load_checkpoint(a.ckpt)
    model, pre = ckpt.model.eval(), ckpt.preprocessing
    dm = ChestXRayDataModule(**ckpt.data_args, **pre.to_dict())
    dm.setup("fit")
    print(f"checkpoint {a.ckpt}; data {ckpt.data_args.get('root')}", file=sys.stderr)

    def of_files(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        return features_of(model, batches_of([pre.load(f) for f in files], pre))

    train_f, _ = of_files(dm.files("train"))
    train_t = (torch.tensor(dm.labels("train")) == ckpt.positive_index).long()
    val_files = dm.files("val")[: a.max_val]
    val_f, val_l = of_files(val_files)
    references = {m: reference_from_features(m, train_f, train_t, val_f, val_l) for m in METHODS}
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with tempfile.TemporaryDirectory() as work:
        for name, tensors in shifted_sets(val_files[:200], pre, Path(work)).items():
            scored[name] = features_of(model, batches_of(tensors, pre))
    generator = torch.Generator().manual_seed(0)
    for name, degradation in DEGRADATIONS.items():
        views = [
            degrade(b, degradation, pre.mean, pre.std, generator)
            for b in batches_of([pre.load(f) for f in val_files], pre)
        ]
        scored[f"validation, {name}"] = features_of(model, views)
    if dm.holdout_root is not None:
        scored["holdout folder (original files)"] = of_files(dm.files("holdout"))

    table: dict[str, dict[str, dict[str, float]]] = {}
    for method, reference in references.items():
        base = reference.score(val_f, val_l)
        for name, (f, logits) in scored.items():
            s = reference.score(f, logits)
            table.setdefault(name, {})[method] = {
                "auroc": separation_auroc(base, s),
                "flagged": float((~reference.in_distribution(s)).float().mean()),
                "n": len(s),
            }
    print(f"\n| set (images) | {' | '.join(f'{m}: AUROC, flagged' for m in METHODS)} |")
    print("|---|" + "---|" * len(METHODS))
    for name, row in table.items():
        n = next(iter(row.values()))["n"]
        cells = " | ".join(f"{row[m]['auroc']:.3f}, {row[m]['flagged']:.0%}" for m in METHODS)
        print(f"| {name} ({n}) | {cells} |")
    print(
        f"\nvalidation images: {len(val_f)}, training images: {len(train_f)}; thresholds: "
        + ", ".join(f"{m} {r.threshold:.4g}" for m, r in references.items())
    )
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
