"""The decoded-image cache and the table of images at the collections' scale.

    python benchmarks/cache_scale.py --sizes 20000 100000 --workdir /tmp/cache_scale

Generates synthetic chest-X-ray-like JPEGs (distinct files, 320 x 384 px, two per patient)
with a label file, then for each size, each in a fresh process:

1. builds the cache as ``pneumonia-train data=manifest`` does (``prepare_data``): images/s,
   peak RSS of the process and of its decoding workers, the cache's size on disk;
2. a second run's setup of the same data (``setup("fit")``: the table, the cache key's stat
   of every file, the patient split, the leak check): seconds and peak RSS.

Each size's figures are printed and appended to ``<workdir>/results.jsonl`` as soon as they
are measured. The images are small: the figures are the pipeline's own cost, not that of
decoding a 2,500 px original (see bench.py for decode rates of real files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 384, 320
BASES = 64  # distinct renderings; each file gets its own stamp, so no two files are identical


def _render_bases() -> list[np.ndarray]:
    from pneumonia.data.synthetic import render_xray

    rng = np.random.default_rng(0)
    return [render_xray(rng, HEIGHT, WIDTH, pneumonia=bool(i % 2)) for i in range(BASES)]


def _write(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    bases = _render_bases()
    for i in range(start, stop):
        image = bases[i % BASES].copy()
        bits = np.unpackbits(np.array([i], dtype=">u4").view(np.uint8))
        image[:4, : bits.size] = bits * 255  # a unique stamp in the corner
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=90)


def generate(workdir: Path, n: int) -> Path:
    """``workdir/images/...`` and ``workdir/labels_<n>.csv``; images made once for the largest."""
    images = workdir / "images"
    made = workdir / "made.txt"
    have = int(made.read_text()) if made.exists() else 0
    if have < n:
        step = 2000
        jobs = [(images, s, min(s + step, n)) for s in range(have, n, step)]
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(_write, jobs))
        made.write_text(str(n))
        print(f"generated {n - have} images in {time.perf_counter() - t0:.0f} s", flush=True)
    labels = workdir / f"labels_{n}.csv"
    if not labels.exists():
        rows = ["path,label,patient"]
        for i in range(n):
            label = "PNEUMONIA" if (i % BASES) % 2 else "NORMAL"
            rows.append(f"images/{i // 1000:03d}/img{i:06d}.jpeg,{label},p{i // 2}")
        labels.write_text("\n".join(rows) + "\n")
    return labels


def _datamodule(workdir: Path, n: int):
    from pneumonia.data import ChestXRayDataModule

    return ChestXRayDataModule(
        workdir,
        cache_dir=workdir / f"cache_{n}",
        table={
            "reader": "manifest",
            "file": f"labels_{n}.csv",
            "columns": {"path": "path", "label": "label", "patient_id": "patient"},
        },
        num_workers=0,
    )


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def phase(workdir: Path, n: int, which: str) -> dict:
    """One phase, in this (fresh) process."""
    dm = _datamodule(workdir, n)
    baseline = _peak_mb()[0]  # the interpreter with torch, Lightning and pandas imported
    t0 = time.perf_counter()
    if which == "build":
        dm.prepare_data()
    else:
        dm.setup("fit")
    seconds = time.perf_counter() - t0
    own, children = _peak_mb()
    return {
        "seconds": seconds,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": own,
        "peak_worker_rss_mb": children,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _du(folder: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pneumonia_cache_scale"))
    parser.add_argument("--phase", choices=["build", "setup"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child process: measure one phase, print JSON
        print("RESULT " + json.dumps(phase(args.workdir, args.n, args.phase)), flush=True)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = f"{_cpu_name()}, {os.cpu_count()} cores"
    print(f"machine: {machine}", flush=True)
    for n in sorted(args.sizes):
        generate(args.workdir, n)
        figures = {"images": n, "machine": machine}
        for which in ("build", "setup"):
            out = subprocess.run(
                [sys.executable, __file__, "--phase", which, "--n", str(n),
                 "--workdir", str(args.workdir)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            figures[which] = json.loads(line.removeprefix("RESULT "))
        cache_bytes = _du(args.workdir / f"cache_{n}")
        figures["build"]["images_per_s"] = n / figures["build"]["seconds"]
        figures["cache_gb"] = cache_bytes / 1e9
        with open(args.workdir / "results.jsonl", "a") as f:
            f.write(json.dumps(figures) + "\n")
        b, s = figures["build"], figures["setup"]
        print(
            f"{n:>7,} images: build {b['seconds']:.0f} s ({b['images_per_s']:.0f} img/s), "
            f"peak RSS {b['peak_rss_mb']:.0f} MB (after imports {b['baseline_rss_mb']:.0f}; "
            f"workers {b['peak_worker_rss_mb']:.0f} MB), cache {figures['cache_gb']:.2f} GB; "
            f"second setup {s['seconds']:.1f} s, peak RSS {s['peak_rss_mb']:.0f} MB "
            f"(after imports {s['baseline_rss_mb']:.0f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
