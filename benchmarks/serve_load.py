"""Load test of ``pneumonia-serve`` on loopback: throughput and p50/p99 latency at 1, 4 and 16
concurrent clients, with the server batching concurrent requests (serve.max_batch=16) and not
(serve.max_batch=1), and every answer checked against ``pneumonia-predict``'s for the same image.

    python benchmarks/serve_load.py <checkpoint> [--images DIR] [--requests 160] [--json out.json]

Bounded: at most ``--requests`` requests per case and ``--seconds`` per case, to 127.0.0.1 only.
Each server is started as users start it (``python -m pneumonia.serve``), in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumonia.data.walk import list_images  # noqa: E402
from pneumonia.inference.runner import inference_precision, predict_files  # noqa: E402
from pneumonia.models.checkpoint import load_checkpoint  # noqa: E402

# (backend, serve.max_batch): torch unbatched and batched, and the ONNX export batched
CASES = [("torch", 1), ("torch", 16), ("onnx", 16)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    ckpt: Path, backend: str, max_batch: int, precision: str, log: Path
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "pneumonia.serve", f"ckpt_path={ckpt}", f"serve.port={port}",
            f"serve.backend={backend}", f"serve.max_batch={max_batch}", f"precision={precision}",
            "serve.log_requests=false",
            f"hydra.run.dir={tempfile.mkdtemp(prefix='serve_load_')}"]  # fmt: skip
    process = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not come up in 180 s")


async def load(url: str, files: list[Path], clients: int, requests: int, seconds: float) -> dict:
    """``clients`` concurrent clients, each sending one image after another, until
    ``requests`` have been sent or ``seconds`` have passed."""
    payloads = [(p, p.read_bytes()) for p in files]
    latencies: list[float] = []
    answers: list[tuple[Path, dict | None, int]] = []
    sent = 0
    stop_at = time.monotonic() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < stop_at:
            path, data = payloads[sent % len(payloads)]
            sent += 1
            t0 = time.perf_counter()
            r = await c.post(url + "/predict", files={"file": (path.name, data)})
            latencies.append(time.perf_counter() - t0)
            answers.append((path, r.json() if r.status_code == 200 else None, r.status_code))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        await client(c)  # one warm-up request, not counted
        latencies.clear()
        answers.clear()
        sent = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    return {
        "requests": len(ms),
        "img_per_s": len(ms) / wall,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        "answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared/data/originals")
    parser.add_argument("--count", type=int, default=64, help="distinct images sent")
    parser.add_argument("--requests", type=int, default=160, help="at most, per case")
    parser.add_argument("--seconds", type=float, default=60, help="at most, per case")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    files = list_images(args.images)[:: max(1, len(list_images(args.images)) // args.count)]
    files = files[: args.count]
    cpu = torch.device("cpu")
    precision = inference_precision(args.precision, cpu)
    reference = {}  # what pneumonia-predict answers, at the precision each backend runs
    for p in {precision, "32-true"}:
        rows = predict_files(load_checkpoint(args.ckpt), files, device=cpu, precision=p)
        reference[p] = {Path(r["file"]): r for r in rows}
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"precision {precision}, {len(files)} images")  # fmt: skip
    rows = []
    for backend, max_batch in CASES:
        log = Path(tempfile.gettempdir()) / f"serve_load_{backend}_{max_batch}.log"
        runs_at = precision if backend == "torch" else "32-true"
        process, url = start(args.ckpt, backend, max_batch, precision, log)
        try:
            for clients in args.clients:
                result = asyncio.run(load(url, files, clients, args.requests, args.seconds))
                expected = reference[runs_at]
                errors = sum(status != 200 for _, _, status in result["answers"])
                deltas = [abs(a["probability"] - expected[p]["probability"])
                          for p, a, _ in result["answers"] if a]  # fmt: skip
                wrong = sum(a["prediction"] != expected[p]["prediction"]
                            for p, a, _ in result["answers"] if a)  # fmt: skip
                row = {"backend": backend, "precision": runs_at, "max_batch": max_batch,
                       "clients": clients, **{k: v for k, v in result.items() if k != "answers"},
                       "errors": errors, "wrong_class": wrong,
                       "max_abs_diff": max(deltas, default=float("nan"))}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            code = process.wait(timeout=60)
            print(f"server {backend} max_batch={max_batch}: SIGTERM, exit status {code}")
    print(
        "\n| backend | batching | clients | requests | img/s | p50 ms | p99 ms | errors | "
        "other class than predict | max abs diff from predict |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['backend']}, {r['precision']} | "
              f"{'max_batch=16' if r['max_batch'] > 1 else 'none (max_batch=1)'} | "
              f"{r['clients']} | {r['requests']} | {r['img_per_s']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['errors']} | {r['wrong_class']} | "
              f"{r['max_abs_diff']:.1e} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
