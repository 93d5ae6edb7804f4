"""What one training step of ``experiment=kermany_cpu`` costs at each input size, on this CPU
(issue 29: a recipe that holds on every CPU kind).

    python benchmarks/recipe_step.py [--sizes 128 112 96] [--repeats 6]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/recipe_step.py \\
        --precisions fp32  # an AVX2 stand-in

For each crop size (the resize keeps the recipe's ratio, 108/96): the recipe's backbone
(ResNet18 from scratch, channels_last, AdamW) on one resident batch of the recipe's size, in
fp32 and in bf16 autocast, median of ``--repeats`` steps after two warm-ups; and the per-image
training augmentation of the recipe (``train_transforms``, then the collation), which runs in
the training process on a 2-core machine. The last columns: the whole step against the first
size, and what the recipe's epochs of 133 steps would take at that speed (the time budget
plans from such a measurement, so a slower step means fewer epochs, never a longer run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F  # noqa: N812
import torchvision

from pneumonia.config import compose
from pneumonia.data.transforms import GEOMETRY, Augmentation, NormalizeCollate, train_transforms

STEPS_PER_EPOCH = 133  # the recipe's batches of the Kermany training images, holdout left out


def median_time(fn, repeats: int) -> float:
    fn()
    fn()  # warm-up: the first calls allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_time(model_cfg, size: int, batch: int, *, bf16: bool, repeats: int) -> float:
    model = torchvision.models.get_model(model_cfg.backbone, weights=None, num_classes=2)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=model_cfg.lr)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return median_time(step, repeats)


def augment_time(data, size: int, resize: int, batch: int, repeats: int) -> float:
    geometry = {**{k: data[k] for k in GEOMETRY}, "crop_size": size}  # as the DataModule does
    transform = train_transforms(Augmentation.of(dict(data.augment), **geometry))
    collate = NormalizeCollate(data.mean, data.std)
    images = [
        torchvision.tv_tensors.Image(torch.randint(0, 256, (1, resize, resize), dtype=torch.uint8))
        for _ in range(batch)
    ]
    return median_time(lambda: collate([(transform(im), 0) for im in images]), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 112, 96])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"],
                        help="bf16 is emulated, and slow, without avx512_bf16")  # fmt: skip
    args = parser.parse_args(argv)
    cfg = compose("train", ["experiment=kermany_cpu"], output_dir="unused")
    batch, epochs = cfg.data.batch_size, cfg.trainer.max_epochs
    print(f"kermany_cpu's step, batch {batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print("\n| crop (resize) | precision | step alone, s | augmentation, s | whole step, s "
          f"| vs {args.sizes[0]} px | {epochs} epochs at this speed |\n"
          "|---|---|---|---|---|---|---|")  # fmt: skip
    base: dict[bool, float] = {}
    for size in args.sizes:
        resize = round(size * cfg.data.resize_size / cfg.data.crop_size)
        aug = augment_time(cfg.data, size, resize, batch, args.repeats)
        for bf16 in [p == "bf16" for p in args.precisions]:
            step = step_time(cfg.model, size, batch, bf16=bf16, repeats=args.repeats)
            whole = step + aug
            base.setdefault(bf16, whole)
            total = epochs * STEPS_PER_EPOCH * whole
            print(f"| {size} ({resize}) | {'bf16' if bf16 else 'fp32'} | {step:.3f} | {aug:.3f} "
                  f"| {whole:.3f} | {base[bf16] / whole:.2f}x faster | {total:,.0f} s |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
