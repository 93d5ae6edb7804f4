"""Why test-time augmentation and the EM prior shift made things worse, on data the project has.

    python benchmarks/tta_and_em.py outputs/<run>/checkpoints/<best>.ckpt

On the official test split (outside this repository) ``tta=true`` cost 0.14 of specificity,
and EM estimated a prevalence of 0.680 against a true 0.625. This looks for the cause on the
run's validation split and on its holdout folder (original files of unseen patients, a known
prevalence), for each suspect:

- the corners a rotation fills: TTA rotates the model's crop, so every rotated view has black
  corners inside it; rotating the resized image *before* the crop keeps them outside (a 5
  degree turn of a 144 px square moves its corners by about 7 px, the crop leaves 8);
- averaging probabilities against averaging the logit differences;
- the temperature fitted on a saturated validation split, and the label smoothing the model was
  trained with, through the EM estimate with and without the temperature.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from pneumonia.data import ChestXRayDataModule
from pneumonia.data.preprocessing import TTA_DEGREES, as_image
from pneumonia.decision.calibration import calibrate, em_prevalence
from pneumonia.decision.metrics import metrics_at
from pneumonia.decision.shift import separation_auroc
from pneumonia.models.checkpoint import load_checkpoint


@torch.inference_mode()
def scores_of(model, batch: torch.Tensor) -> torch.Tensor:
    return model.score(model(batch))


def crop_turned(images: torch.Tensor, fill: list[float]) -> list[torch.Tensor]:
    """TTA as it was before this investigation: the normalised crop turned, its corners black."""
    fill_ = torch.tensor(fill).view(1, -1, 1, 1)
    return [
        images
        if d == 0
        else TF.rotate(images - fill_, d, interpolation=InterpolationMode.BILINEAR) + fill_
        for d in TTA_DEGREES
    ]


def views(files: list[Path], pre, model) -> dict[str, torch.Tensor]:
    """Per way of scoring: the (N, views) logit differences of every file."""
    out: dict[str, list[torch.Tensor]] = {
        "crop rotated (black corners)": [],
        "image rotated, then cropped": [],
    }
    fill = pre.normalized(0.0)
    for start in range(0, len(files), 64):
        chunk = files[start : start + 64]
        resized = [as_image(pre.decode(f)) for f in chunk]  # (1, S, S) uint8, before the crop
        batch, _ = pre.collate([(pre.eval_transform(r), 0) for r in resized])
        out["crop rotated (black corners)"].append(
            torch.stack([scores_of(model, v) for v in crop_turned(batch, fill)], dim=1)
        )
        turned = []
        for degrees in TTA_DEGREES:
            rotated = [
                pre.eval_transform(
                    TF.rotate(r, degrees, interpolation=InterpolationMode.BILINEAR)
                    if degrees
                    else r
                )
                for r in resized
            ]
            turned.append(scores_of(model, pre.collate([(t, 0) for t in rotated])[0]))
        out["image rotated, then cropped"].append(torch.stack(turned, dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    a = p.parse_args()
    ckpt = load_checkpoint(a.ckpt)
    model, pre = ckpt.model.eval(), ckpt.preprocessing
    dm = ChestXRayDataModule(**ckpt.data_args, **pre.to_dict())
    dm.setup("fit")
    hp, threshold = model.hparams, ckpt.threshold
    temperature, reference = float(model.temperature), float(model.reference_logit)

    def prob(scores: torch.Tensor, t: float = temperature) -> torch.Tensor:
        return calibrate(scores, temperature=t, reference_logit=reference, prevalence=hp.prevalence)

    print(
        f"checkpoint {a.ckpt}: temperature {temperature:.3f}, label smoothing "
        f"{hp.label_smoothing}, threshold {threshold}, resize {pre.resize_mode}",
        file=sys.stderr,
    )
    splits = ["val"] + (["holdout"] if dm.holdout_root is not None else [])
    print(
        "\n| split | scoring | AUROC | sensitivity | specificity | mean p, NORMAL | mean p, "
        "PNEUMONIA |\n|---|---|---|---|---|---|---|"
    )
    for split in splits:
        files = dm.files(split)
        targets = (torch.tensor(dm.labels(split)) == ckpt.positive_index).long()
        scored = views(files, pre, model)
        plain = scored["crop rotated (black corners)"][:, TTA_DEGREES.index(0.0)]
        rows = {"plain (no TTA)": prob(plain)}
        for name, s in scored.items():
            rows[f"TTA, {name}, mean of p"] = prob(s).mean(dim=1)
            rows[f"TTA, {name}, p of mean score"] = prob(s.mean(dim=1))
        for k, degrees in enumerate(TTA_DEGREES):
            if degrees:
                rows[f"one view: crop rotated {degrees:+.0f} degrees"] = prob(
                    scored["crop rotated (black corners)"][:, k]
                )
        for name, p in rows.items():
            m = metrics_at(p, targets, threshold)
            auroc = separation_auroc(p[targets == 0], p[targets == 1])
            print(
                f"| {split} ({len(files)}) | {name} | {auroc:.3f} | {m['recall']:.3f} | "
                f"{m['specificity']:.3f} | {p[targets == 0].mean():.3f} | "
                f"{p[targets == 1].mean():.3f} |"
            )
        true = targets.float().mean().item()
        for label, t in (("fitted temperature", temperature), ("temperature 1", 1.0)):
            estimate, iterations, converged = em_prevalence(prob(plain, t), hp.prevalence)
            print(
                f"EM on {split}: true prevalence {true:.3f}, estimate {estimate:.3f} with the "
                f"{label} ({iterations} iterations{'' if converged else ', not converged'})"
            )


if __name__ == "__main__":
    main()
