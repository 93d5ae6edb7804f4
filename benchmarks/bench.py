"""Speed, side by side in one run: the original notebook against this project.

    python benchmarks/bench.py                 # CPU, about 8-12 minutes on 2 cores
    python benchmarks/bench.py --device cuda   # the GPU path (precision auto, workers, cache)
    python benchmarks/bench.py --quick         # a smoke run of every case
    python benchmarks/bench.py --cases matmul,step_only   # a subset
    python benchmarks/bench.py --out DIR       # each case's figures to DIR/cases.jsonl as it ends
    bash benchmarks/gpu.sh                     # the prepared GPU run (writes to $OUT)
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench.py ...
        # an AVX512 CPU standing in for an AVX2-only one: no native bf16, AVX2 kernels

It first prints what the machine offers (CPU model and flags, cores, torch's CPU capability,
the precision ``auto`` picks and why); figures only carry over between machines of the same
kind, ratios measured side by side in one run carry over better. The project and the
hand-tuned loop run at the precision ``auto`` picks, and again at the other one for reference.

Each case runs in a fresh subprocess (allocator state and malloc tuning cannot leak between
cases); each figure is the median over ``--repeats`` epochs or passes of that process. With
``--out`` (or ``$OUT``), every case's figures are written the moment it ends, and a case that
fails is recorded there and the run goes on: a run cut short keeps what it measured; the run
then exits with status 1, naming every failed case. On a GPU,
``nvidia-smi`` is sampled during each case for the GPU's mean utilisation. Data:
the real originals in ../shared/data/originals (large, mostly grayscale JPEGs) or, when absent,
a synthetic folder of the same sizes. The model is ResNet50 at 224 px, random init (no
download here; the FLOPs are those of the pretrained one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
ORIGINALS = REPO.parent / "shared" / "data" / "originals"
RESNET50_FWD_GFLOP = 8.2  # one 224 px forward pass; a training step is about 3x that


# ----------------------------------------------------------------------------- the machine
def machine(device: str) -> str:
    """What decides the figures: CPU model and flags, cores, torch's kernels, the precision."""
    from pneumonia.system.runtime import cpu_flags, resolve_precision, usable_cpus

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    shown = ", ".join(f for f in wanted if f in flags) if flags is not None else "unreadable"
    choice = resolve_precision("auto", device)
    lines = [
        f"Machine: {model}; {usable_cpus()} usable cores of {os.cpu_count()}",
        f"  CPU flags: {shown or 'none of ' + ', '.join(wanted)}; "
        f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}",
        f"  precision auto on {device}: {choice.precision} ({choice.reason})",
    ]
    if device == "cuda":
        lines.append(f"  GPU: {torch.cuda.get_device_name()}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data
def prepare_data(workdir: Path, data: Path | None = None) -> Path:
    """A Kaggle-layout root whose train/ is ``data``'s train/ (and val/ its val/: the project
    then trains on every training image, validating on val/ as it is), else the originals, else
    synthetic stand-ins."""
    root = workdir / "root"
    if (root / "train").exists():
        return root
    root.mkdir(parents=True)
    if data is not None:
        if not (data / "train").is_dir():
            raise SystemExit(f"--data {data}: no train/ folder (a Kaggle layout: train/<CLASS>/)")
        for split in ("train", "val"):
            if (data / split).is_dir():
                (root / split).symlink_to((data / split).resolve())
    elif (ORIGINALS / "NORMAL").is_dir():
        (root / "train").symlink_to(ORIGINALS.resolve())
    else:
        from pneumonia.data.synthetic import generate_synthetic_dataset

        generate_synthetic_dataset(root / "gen", {"train": (60, 120)}, min_size=1000, max_size=2000)
        (root / "train").symlink_to(root / "gen" / "train")
    return root


def val_split(root: Path) -> str:
    """official where the root has val/ (every train/ image is trained on), else patient."""
    return "official" if (root / "val").is_dir() else "patient"


def notebook_loader(root: Path, batch_size: int, workers: int = 2):
    """The notebook's pipeline: ImageFolder + PIL decode every epoch, v1 transforms."""
    from torchvision import datasets
    from torchvision import transforms as T  # noqa: N812

    tf = T.Compose(
        [
            T.Resize(255),
            T.CenterCrop(224),
            T.RandomHorizontalFlip(),
            T.RandomRotation(10),
            T.RandomGrayscale(),
            T.RandomAffine(degrees=0, translate=(0.05, 0.05)),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    data = datasets.ImageFolder(str(root / "train"), transform=tf)
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def project_datamodule(root: Path, cache_dir: Path, batch_size: int, device: str):
    from pneumonia.data import ChestXRayDataModule

    dm = ChestXRayDataModule(
        root=root,
        cache_dir=cache_dir,
        batch_size=batch_size,
        val_split=val_split(root),
        val_fraction=0.1,
        pin_memory=device == "cuda",
    )
    t = time.perf_counter()
    dm.setup("fit")
    return dm, time.perf_counter() - t


def epochs(
    loader, repeats: int, step=None, device: str = "cpu", max_batches: int = 0
) -> list[float]:
    """img/s of ``repeats`` full passes over ``loader`` (after one warm-up pass of 2 batches),
    each of at most ``max_batches`` batches (0: all)."""
    it = iter(loader)
    for _ in range(2):
        batch = next(it, None)
        if batch is not None and step is not None:
            step(*batch)
    rates = []
    for _ in range(repeats):
        n, t = 0, time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            if step is not None:
                step(images, labels)
            n += len(labels)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t))
    return rates


# ----------------------------------------------------------------------------- training
def auto_is_bf16(device: str) -> bool:
    from pneumonia.system.runtime import resolve_precision

    return resolve_precision("auto", device).precision.startswith("bf16")


def make_step(device: str, *, bf16: bool, channels_last: bool, weight: torch.Tensor):
    import torchvision

    model = torchvision.models.resnet50(num_classes=2).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    weight = weight.to(device)

    def step(images, labels):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(device), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def case_data_notebook(a, root, work):
    loader = notebook_loader(root, a.batch_size, workers=2)
    return {"rates": epochs(loader, a.repeats, max_batches=a.max_batches)}


def case_data_project(a, root, work):
    dm, build = project_datamodule(root, work / "cache", a.batch_size, a.device)
    dm2, reopen = project_datamodule(root, work / "cache", a.batch_size, a.device)
    return {
        "rates": epochs(dm2.train_dataloader(), a.repeats, max_batches=a.max_batches),
        "cache_build_s": build,
        "cache_reopen_s": reopen,
    }


def case_train_notebook(a, root, work):
    loader = notebook_loader(root, a.batch_size, workers=2)
    counts = torch.bincount(torch.tensor(loader.dataset.targets)).float()
    weight = counts.sum() / (len(counts) * counts)
    step = make_step(a.device, bf16=False, channels_last=False, weight=weight)
    return {"rates": epochs(loader, a.repeats, step, a.device, a.max_batches)}


def case_train_handtuned(a, root, work, *, other: bool = False):
    dm, _ = project_datamodule(root, work / "cache", a.batch_size, a.device)
    bf16 = auto_is_bf16(a.device) != other
    step = make_step(a.device, bf16=bf16, channels_last=True, weight=dm.class_weights)
    rates = epochs(dm.train_dataloader(), a.repeats, step, a.device, a.max_batches)
    return {"rates": rates, "bf16": bf16}


class EpochTimer(pl.Callback):
    """img/s of every training epoch, data loading and Lightning's own work included."""

    rates: list[float] = []
    cuda = False

    def on_train_epoch_start(self, trainer, pl_module):
        self.t, self.n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.n += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module):
        if self.cuda:
            torch.cuda.synchronize()
        EpochTimer.rates.append(self.n / (time.perf_counter() - self.t))


def case_train_project(
    a, root, work, *, other: bool = False, precision: str | None = None, extra: tuple[str, ...] = ()
):
    """``python -m pneumonia.train`` as a user runs it, timed per training epoch: at the
    precision ``auto`` picks, the other one (``other``), or the one given."""
    from omegaconf import open_dict

    import pneumonia
    from pneumonia.train import train

    trainer = "gpu" if a.device == "cuda" else "cpu"
    if precision is None:
        bf16 = auto_is_bf16(a.device) != other
        # GPUs without bf16 get 16-mixed from auto; "the other" is then 32-true
        precision = ("bf16-mixed" if bf16 else "32-true") if other else "auto"
    else:  # named: no probe of what auto would pick
        bf16 = precision.startswith("bf16")
    overrides = [
        f"trainer.precision={precision}",
        "model=resnet50",
        "model.weights=null",
        "model.lr=1e-4",
        "model.optimizer=adam",
        f"trainer={trainer}",
        f"trainer.max_epochs={a.repeats + 1}",
        *([f"trainer.limit_train_batches={a.max_batches}"] if a.max_batches else []),
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        f"data.root={root}",
        f"data.val_split={val_split(root)}",
        f"data.cache_dir={work / 'cache'}",
        f"data.batch_size={a.batch_size}",
        f"paths.root_dir={work}",
        "callbacks.progress_bar.refresh_rate=0",
        "logger=csv",
        # timing only: no checkpoint writes or image logging inside the timed epochs
        "~callbacks.sample_grid",
        "~callbacks.evaluation_figures",
        "~callbacks.time_budget",
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "+trainer.enable_checkpointing=false",
        "optimized_metric=null",
        *extra,
    ]
    cfg = pneumonia.compose("train", overrides, output_dir=work / f"run-{os.getpid()}")
    with open_dict(cfg):
        cfg.callbacks.epoch_timer = {"_target_": "__main__.EpochTimer"}
    EpochTimer.cuda = a.device == "cuda"
    train(cfg)
    rates = EpochTimer.rates
    # the first epoch includes one-off warm-up (and compiling, with model.compile=true)
    warmup = rates[0] if rates else None
    return {"rates": rates[1:] or rates, "warmup_img_s": warmup, "bf16": bf16,
            "precision": cfg.trainer.precision}  # fmt: skip


def case_train_project_ddp(a, root, work):
    """The same on two GPUs (trainer=ddp, devices=2), where the machine has two."""
    if a.device != "cuda" or torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count() if a.device == 'cuda' else 0} GPU(s)"}
    return case_train_project(a, root, work, extra=("trainer=ddp", "trainer.devices=2"))


def case_evaluate_project(a, root, work):
    """``pneumonia-evaluate`` as users run it, on a labelled folder the checkpoint never saw:
    the checkpoint is a ResNet50 trained for two steps on val/ alone, the folder is train/ (at
    most ``max_batches`` x ``batch_size`` of its images). Timed whole, per pass: decoding every
    file, the model, the metrics with their intervals and the report. A root without val/ (the
    originals) has nothing held out: the checkpoint is then fitted on train/ itself, which
    changes its metrics (unused here), not the time a pass takes."""
    import pneumonia
    from pneumonia.evaluate import evaluate
    from pneumonia.train import train

    fitted = work / "evaluate_fit"
    (fitted / "data").mkdir(parents=True, exist_ok=True)
    source = root / ("val" if (root / "val").is_dir() else "train")
    if not (fitted / "data" / "train").exists():
        (fitted / "data" / "train").symlink_to(source.resolve())
    trainer = "gpu" if a.device == "cuda" else "cpu"
    cfg = pneumonia.compose("train", [
        "model=resnet50", "model.weights=null", f"trainer={trainer}", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "test=false", "checks.enabled=false",
        f"data.root={fitted / 'data'}", "data.val_fraction=0.3", "data.batch_size=4",
        f"data.cache_dir={work / 'cache_fit'}", f"paths.root_dir={work}",
        "callbacks.progress_bar.refresh_rate=0", "logger=csv",
    ], output_dir=fitted / "run")  # fmt: skip
    ckpt = train(cfg)["best_model_path"]
    heldout = root / "train"
    if a.max_batches:  # a dry run: the same files, fewer of them
        heldout = work / "heldout"
        for cls in sorted(p.name for p in (root / "train").iterdir() if p.is_dir()):
            (heldout / cls).mkdir(parents=True, exist_ok=True)
            for f in sorted((root / "train" / cls).iterdir())[: a.max_batches * a.batch_size // 2]:
                if not (heldout / cls / f.name).exists():
                    (heldout / cls / f.name).symlink_to(f.resolve())
    n = sum(1 for f in heldout.rglob("*") if f.is_file())
    rates = []
    for i in range(a.repeats):
        t = time.perf_counter()
        evaluate(pneumonia.compose("evaluate", [
            f"ckpt_path={ckpt}", f"data.root={heldout}", f"batch_size={a.batch_size}",
        ], output_dir=work / f"evaluate_{i}"))  # fmt: skip
        rates.append(n / (time.perf_counter() - t))
    return {"rates": rates, "images": n, "held_out": source != root / "train"}


def case_infer(a, root, work, precision: str):
    """``predict_files`` (what pneumonia-predict runs) on every training file, timed whole."""
    from pneumonia.data import Preprocessing
    from pneumonia.data.walk import list_images
    from pneumonia.inference.runner import predict_files
    from pneumonia.models.checkpoint import LoadedCheckpoint
    from pneumonia.models.classifier import PneumoniaClassifier

    model = PneumoniaClassifier(backbone="resnet50", weights=None).eval()
    ckpt = LoadedCheckpoint(
        model=model,
        path=Path("random.ckpt"),
        preprocessing=Preprocessing(),
        data_args={},
        config=None,
    )
    files = list_images(root / "train")
    device = torch.device(a.device)
    rates = []
    predict_files(ckpt, files[:8], device=device, precision=precision)  # warm-up
    for _ in range(a.repeats):
        t = time.perf_counter()
        rows = predict_files(ckpt, files, batch_size=32, device=device, precision=precision)
        if a.device == "cuda":
            torch.cuda.synchronize()
        rates.append(len(files) / (time.perf_counter() - t))
        # predict_files gives an unusable file a row with its error: timed, it would count
        # images that were never scored
        failed = [f"{r['file']}: {r['error']}" for r in rows if r["error"]]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(files)} files not scored:\n" +
                               "\n".join(failed[:10]))  # fmt: skip
    return {"rates": rates}


def case_step_only(a, root, work):
    """ResNet50 training steps on one resident batch: the compute ceiling of each setting."""
    out = {}
    settings = [  # name, bf16, channels_last, batch size, cudnn.benchmark
        ("fp32", False, False, a.batch_size, False),
        ("fp32_cl", False, True, a.batch_size, False),
        ("bf16_cl", True, True, a.batch_size, False),
    ]
    if a.device == "cuda":  # the GPU levers of issue 22, each beside bf16_cl
        settings += [
            ("bf16_cl_cudnn_benchmark", True, True, a.batch_size, True),
            ("bf16_cl_2x_batch", True, True, 2 * a.batch_size, False),
        ]
    for name, bf16, cl, batch, benchmark in settings:
        torch.backends.cudnn.benchmark = benchmark
        try:
            x = torch.randn(batch, 3, 224, 224)
            y = torch.randint(0, 2, (batch,))
            step = make_step(a.device, bf16=bf16, channels_last=cl, weight=torch.ones(2))
            step(x, y)
            step(x, y)  # cudnn.benchmark tries its algorithms on the first calls
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                step(x, y)
                if a.device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            out[name] = batch / statistics.median(times)
        finally:  # a failing setting (out of memory at 2x) leaves the next ones as they were
            torch.backends.cudnn.benchmark = False
    return {"step_img_s": out}


def case_matmul(a, root, work):
    n = 4096 if a.device == "cuda" else 2048
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(n, n, device=a.device, dtype=dtype)
        y = torch.randn(n, n, device=a.device, dtype=dtype)
        x @ y
        reps, times = 5 if a.device == "cpu" else 50, []
        for _ in range(3):
            if a.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                x @ y
            if a.device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) / reps)
        out[name] = 2 * n**3 / statistics.median(times) / 1e9
    return {"gflops": out}


CASES = {
    "data_notebook": case_data_notebook,
    "data_project": case_data_project,
    "train_notebook": case_train_notebook,
    "train_handtuned": case_train_handtuned,
    "train_handtuned_other": lambda a, r, w: case_train_handtuned(a, r, w, other=True),
    "train_handtuned_glibc": case_train_handtuned,
    "train_project": case_train_project,
    "train_project_other": lambda a, r, w: case_train_project(a, r, w, other=True),
    "train_project_glibc": case_train_project,
    # the same run, its augmentation done on whole batches on the device (data.augment_on)
    "train_project_device_augment": lambda a, r, w: case_train_project(
        a, r, w, extra=("data.augment_on=device",)
    ),
    # each precision by name, with the per-image and the device augmentation
    "train_project_fp32": lambda a, r, w: case_train_project(a, r, w, precision="32-true"),
    "train_project_bf16": lambda a, r, w: case_train_project(a, r, w, precision="bf16-mixed"),
    "train_project_fp32_device_augment": lambda a, r, w: case_train_project(
        a, r, w, precision="32-true", extra=("data.augment_on=device",)
    ),
    "train_project_bf16_device_augment": lambda a, r, w: case_train_project(
        a, r, w, precision="bf16-mixed", extra=("data.augment_on=device",)
    ),
    "train_project_ddp": case_train_project_ddp,
    "evaluate_project": case_evaluate_project,
    # torch.compile: its compiling is in the first epoch's rate (warmup_img_s), not in "rates"
    "train_project_compile": lambda a, r, w: case_train_project(
        a, r, w, extra=("model.compile=true",)
    ),
    "infer_fp32": lambda a, r, w: case_infer(a, r, w, "32-true"),
    "infer_bf16": lambda a, r, w: case_infer(a, r, w, "bf16-mixed"),
    "step_only": case_step_only,
    "matmul": case_matmul,
}
NO_MALLOC_TUNING = {
    "data_notebook",
    "train_notebook",
    "train_handtuned_glibc",
    "train_project_glibc",
}


def worker(a) -> None:
    from pneumonia.system.runtime import tune_malloc

    applied = tune_malloc()  # honours PNEUMONIA_MALLOC_TUNING=0 for the glibc cases
    work = Path(a.workdir)
    root = prepare_data(work, Path(a.data) if a.data else None)
    result = CASES[a.worker](a, root, work)
    result["malloc_tuned"] = applied
    print("RESULT " + json.dumps(result))


class GpuUtilisation:
    """``nvidia-smi``'s utilisation of GPU 0, sampled every ``period`` s while a case runs
    (None where there is no nvidia-smi)."""

    def __init__(self, period: float = 0.5) -> None:
        import shutil
        import threading

        self.samples: list[float] = []
        self.period, self.stop = period, threading.Event()
        self.smi = shutil.which("nvidia-smi")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            out = subprocess.run([self.smi, "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True)  # fmt: skip
            if out.returncode == 0 and out.stdout.strip().isdigit():
                self.samples.append(float(out.stdout.strip()))

    def __enter__(self) -> GpuUtilisation:
        if self.smi:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.smi:
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def run_case(name: str, a) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if name in NO_MALLOC_TUNING:
        env["PNEUMONIA_MALLOC_TUNING"] = "0"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--workdir",
        a.workdir,
        "--device",
        a.device,
        "--repeats",
        str(a.repeats),
        "--batch-size",
        str(a.batch_size),
        "--max-batches",
        str(a.max_batches),
        *(["--data", a.data] if a.data else []),
    ]
    t = time.perf_counter()
    with GpuUtilisation() if a.device == "cuda" else contextlib.nullcontext() as gpu:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall_s"] = time.perf_counter() - t
    result["gpu_utilisation_mean"] = gpu.mean if gpu is not None else None
    util = f", GPU busy {gpu.mean:.0f}%" if gpu is not None and gpu.mean is not None else ""
    print(
        f"  {name:24s} {statistics.median(result['rates']) if 'rates' in result else '':>8}"
        f"  ({result['wall_s']:.0f} s{util})",
        flush=True,
    )
    return result


def run_cases(names: list[str], a) -> tuple[dict[str, dict], dict[str, str]]:
    """Every case in turn: the figures of those that ran, the errors of those that failed.
    With ``a.out``, each one's figures appended to ``cases.jsonl`` (a failure to
    ``errors.txt``) the moment it ends, so that a run cut short keeps what it measured: a few
    files, whatever the number of cases (a GPU call brings back 8 at most)."""
    results, failed = {}, {}
    for name in names:
        try:
            results[name] = run_case(name, a)
        except RuntimeError as e:
            print(f"  {name:24s} FAILED (recorded; the run goes on)", flush=True)
            failed[name] = str(e)
            if a.out:
                with (Path(a.out) / "errors.txt").open("a") as f:
                    f.write(f"===== {name}\n{e}\n")
            continue
        if a.out:
            record = {"case": name, "args": {k: v for k, v in vars(a).items() if k != "out"},
                      **results[name]}  # fmt: skip
            with (Path(a.out) / "cases.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
    return results, failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="one repeat of every case")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write all figures to this JSON file")
    p.add_argument("--cases", default=None, help="comma-separated subset of the cases")
    p.add_argument("--out", default=os.environ.get("OUT"),
                   help="write each case's figures here as it ends (default: $OUT)")  # fmt: skip
    p.add_argument("--data", default=os.environ.get("BENCH_DATA"),
                   help="a Kaggle-layout folder (train/<CLASS>/, val/) to run every case on, "
                   "instead of ../shared/data/originals (default: $BENCH_DATA)")  # fmt: skip
    p.add_argument("--max-batches", type=int, default=0,
                   help="at most this many batches an epoch (0: all): a dry run at tiny scale "
                   "on the same data")  # fmt: skip
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    if a.quick:
        a.repeats = 1
    tmp = tempfile.TemporaryDirectory(prefix="pneumonia-bench-")
    a.workdir = a.workdir or tmp.name
    root = prepare_data(Path(a.workdir), Path(a.data) if a.data else None)
    source = a.data or ("originals" if (ORIGINALS / "NORMAL").is_dir() else "synthetic stand-ins")
    counts = {s: sum(1 for f in (root / s).rglob("*") if f.is_file()) for s in ("train", "val")
              if (root / s).is_dir()}  # fmt: skip
    described = machine(a.device)
    print(described, flush=True)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "machine.txt").write_text(described + "\n")
    print(
        f"torch {torch.__version__}, device {a.device}, data: {source} {counts}, "
        f"batch {a.batch_size}, median of {a.repeats}"
        + (f", at most {a.max_batches} batches an epoch (a dry run)" if a.max_batches else ""),
        flush=True,
    )
    t0 = time.perf_counter()
    names = a.cases.split(",") if a.cases else list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; valid: {', '.join(CASES)}")
    r, failed = run_cases(names, a)
    summary = io.StringIO()
    with contextlib.redirect_stdout(Tee(sys.stdout, summary)):
        report(r, a, t0)
        for name, error in failed.items():  # the end of each case's stderr: where it broke
            last = [line for line in error.splitlines() if line.strip()][-1:]
            print(f"FAILED {name}: {last[0] if last else 'no output'}")
    if a.out:
        (Path(a.out) / "summary.md").write_text(summary.getvalue())
    if a.json:
        Path(a.json).write_text(
            json.dumps({"args": vars(a), "results": r, "failed": failed}, indent=2)
        )
    if failed:  # a benchmark with a failing case is a failing run, whatever it measured
        raise SystemExit(f"{len(failed)} of {len(names)} cases failed: {', '.join(failed)}")


class Tee:
    """Writes to several streams: the summary goes to the terminal and to ``--out``."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def report(r: dict[str, dict], a, t0: float) -> None:
    """The side-by-side table of the cases that ran."""
    med = {k: statistics.median(v["rates"]) for k, v in r.items() if "rates" in v}
    step_gflop = 3 * RESNET50_FWD_GFLOP
    used, other = ("bf16", "fp32") if auto_is_bf16(a.device) else ("fp32", "bf16")

    rows = [  # (comparison, baseline, its case, candidate, its case)
        ("1. data only, img/s", "notebook: ImageFolder+PIL, 2 workers", "data_notebook",
         "project: DataModule, uint8 cache", "data_project"),
        ("2. training ResNet50 224px, img/s", "notebook loop: fp32, its pipeline", "train_notebook",
         f"python -m pneumonia.train (precision auto = {used}, cache, channels_last)",
         "train_project"),
        ("   vs a hand-tuned loop", f"hand-tuned: cache, {used}, channels_last, malloc",
         "train_handtuned", "python -m pneumonia.train", "train_project"),
        (f"   the other precision ({other}), for reference", f"hand-tuned, {other}",
         "train_handtuned_other", f"python -m pneumonia.train, trainer.precision={other}",
         "train_project_other"),
        (f"   auto ({used}) against {other}", f"python -m pneumonia.train, {other}",
         "train_project_other", f"python -m pneumonia.train, auto = {used}", "train_project"),
        ("   augmentation on the device", "pneumonia.train, per image in the loader",
         "train_project", "data.augment_on=device", "train_project_device_augment"),
        ("   torch.compile", "pneumonia.train, eager", "train_project",
         "model.compile=true, after its first epoch", "train_project_compile"),
        ("   bf16 against fp32, by name", "pneumonia.train, trainer.precision=32-true",
         "train_project_fp32", "trainer.precision=bf16-mixed", "train_project_bf16"),
        ("   fp32: augmentation on the device", "per image in the loader", "train_project_fp32",
         "data.augment_on=device", "train_project_fp32_device_augment"),
        ("   bf16: augmentation on the device", "per image in the loader", "train_project_bf16",
         "data.augment_on=device", "train_project_bf16_device_augment"),
        ("   two GPUs (DDP)", "pneumonia.train, one GPU", "train_project",
         "trainer=ddp trainer.devices=2", "train_project_ddp"),
        ("   the data pipeline against training", "pneumonia.train, auto", "train_project",
         "its data pipeline alone (uint8 cache)", "data_project"),
        ("3. inference (predict), img/s", "fp32", "infer_fp32", "bf16", "infer_bf16"),
        ("5. glibc malloc, training img/s", "hand-tuned, glibc default", "train_handtuned_glibc",
         "hand-tuned, mallopt tuned", "train_handtuned"),
        ("   the same through Lightning", "pneumonia.train, glibc default",
         "train_project_glibc", "pneumonia.train, mallopt tuned", "train_project"),
    ]  # fmt: skip
    print("\n| comparison | baseline | img/s | candidate | img/s | ratio |")
    print("|---|---|---|---|---|---|")
    for title, base, b, cand, c in rows:
        if b in med and c in med:
            ratio = med[c] / med[b]
            print(f"| {title} | {base} | {med[b]:.1f} | {cand} | {med[c]:.1f} | {ratio:.2f}x |")
    warm = r.get("train_project_compile", {}).get("warmup_img_s")  # its compiling, apart
    if warm is not None:
        print(f"torch.compile's first epoch, its compiling included: {warm:.1f} img/s")
    firsts = {k: v["warmup_img_s"] for k, v in r.items() if v.get("warmup_img_s") is not None}
    if firsts:
        print("First epochs apart (start-up, cache, cudnn autotuning), img/s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in firsts.items()))  # fmt: skip
    if "evaluate_project" in med:
        e = r["evaluate_project"]
        seen = "it never saw" if e.get("held_out") else "it was fitted on (the root has no val/)"
        print(f"6. pneumonia-evaluate on {e['images']} images {seen}, whole command: "
              f"{med['evaluate_project']:.1f} img/s")  # fmt: skip
    for k, v in r.items():
        if "skipped" in v:
            print(f"{k}: not run ({v['skipped']})")
    if "step_only" in r:
        steps = r["step_only"]["step_img_s"]
        ceiling_step = steps["bf16_cl"] if used == "bf16" else steps["fp32_cl"]
        print(
            f"\nTraining step alone (one resident batch), img/s: fp32 {steps['fp32']:.1f}, "
            f"fp32 channels_last {steps['fp32_cl']:.1f}, bf16 + channels_last "
            f"{steps['bf16_cl']:.1f}; bf16 against fp32 channels_last: "
            f"{steps['bf16_cl'] / steps['fp32_cl']:.2f}x"
        )
        for lever in ("bf16_cl_cudnn_benchmark", "bf16_cl_2x_batch"):  # the GPU's extra levers
            if lever in steps:
                print(f"   {lever}: {steps[lever]:.1f} ({steps[lever] / steps['bf16_cl']:.2f}x)")
        if "train_notebook" in med and "train_project" in med:
            print(
                f"   at {used}, at most {ceiling_step / med['train_notebook']:.2f}x the "
                f"notebook loop; pneumonia.train reaches {med['train_project'] / ceiling_step:.0%}"
                " of it"
            )
    if "matmul" in r:
        ceil = r["matmul"]["gflops"]
        line = f"4. matmul ceilings (GFLOP/s): fp32 {ceil['fp32']:.0f}, bf16 {ceil['bf16']:.0f}"
        if "train_project" in med:
            line += (
                f"; the project's ResNet50 training step ({step_gflop:.1f} GFLOP/img) reaches "
                f"{med['train_project'] * step_gflop:.0f} GFLOP/s = "
                f"{med['train_project'] * step_gflop / ceil[used]:.0%} of the {used} ceiling"
            )
        print(line)
    if "data_project" in r:
        d = r["data_project"]
        print(
            f"   one-time cache build: {d['cache_build_s']:.1f} s; reopening it: "
            f"{d['cache_reopen_s']:.2f} s."
        )
    utilisation = {k: v["gpu_utilisation_mean"] for k, v in r.items()
                   if v.get("gpu_utilisation_mean") is not None}  # fmt: skip
    if utilisation:
        print("GPU busy (nvidia-smi, mean over each case): " + ", ".join(
            f"{k} {v:.0f}%" for k, v in utilisation.items()))  # fmt: skip
    print(f"Total benchmark time {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
