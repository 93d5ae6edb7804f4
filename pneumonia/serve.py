"""``python -m pneumonia.serve ckpt_path=...``: the checkpoint behind an HTTP API and a page.

    pneumonia-serve ckpt_path=outputs/train/runs/<run>/checkpoints/<best>.ckpt
    # open http://127.0.0.1:8000/  (or: curl -F file=@xray.jpeg http://127.0.0.1:8000/predict)

FastAPI on uvicorn (``pneumonia.serving``). The model is loaded once, on the device and at the
precision ``auto`` picks (as evaluate and predict do), before the server listens: once it
answers, ``/health`` is 200. SIGTERM (or Ctrl-C) stops taking new connections, lets the
requests in flight finish (``serve.graceful_timeout_s``), then exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pneumonia.config import CONFIG_DIR, SERVE_RULES, check_values
from pneumonia.inference.runner import inference_precision
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.runs.folders import best_checkpoint
from pneumonia.runs.owners import command_folder
from pneumonia.system.runtime import resolve_device

log = logging.getLogger(__name__)
TOKEN_VARIABLE = "PNEUMONIA_SERVE_TOKEN"


def serve(cfg: DictConfig) -> None:
    """Load ``cfg.ckpt_path`` (a checkpoint, or a training run's folder: its best checkpoint)
    and serve it until SIGTERM or Ctrl-C."""
    check_values(cfg, SERVE_RULES)
    with command_folder(cfg, "serve") as out:
        _serve(cfg, out)


def _serve(cfg: DictConfig, out: Path) -> None:
    import uvicorn

    from pneumonia.serving.app import Settings, create_app
    from pneumonia.serving.model import ServedModel

    source = Path(cfg.ckpt_path).expanduser()
    ckpt = load_checkpoint(best_checkpoint(source) if source.is_dir() else source)
    ckpt.use_threshold(cfg.get("threshold"))
    ckpt.use_max_upscale(cfg.get("max_upscale"))
    device = resolve_device(cfg.accelerator)
    options = cfg.serve
    precision = inference_precision(cfg.precision, device)
    served = ServedModel(
        ckpt, device=device, precision=precision, backend=options.backend, export_dir=out / "onnx"
    )
    token = options.token or os.environ.get(TOKEN_VARIABLE) or None
    settings = Settings(
        max_upload_bytes=int(options.max_upload_mb * 2**20),
        token=token,
        uploads=out / "uploads" if options.keep_uploads else None,
        max_batch=int(options.max_batch),
        batch_wait_s=float(options.batch_wait_ms) / 1000.0,
    )
    app = create_app(served, settings)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=int(options.port),
        timeout_graceful_shutdown=float(options.graceful_timeout_s),
        access_log=bool(options.log_requests),
        log_config=None,  # Hydra's logging: the run folder's serve.log and the console
    )
    server = uvicorn.Server(config)
    if options.open:
        _open_when_started(server, f"http://{options.host}:{int(options.port)}/")
    log.info(
        "Serving %s (%s, %s, %s) at http://%s:%d/ : the page at /, the API at /predict, /model and "
        "/health; auth %s; uploads %s. Decision: %s",
        ckpt.path, options.backend, device.type, served.precision, options.host, int(options.port),
        f"by bearer token ({'serve.token' if options.token else TOKEN_VARIABLE})" if token
        else "off", f"kept in {settings.uploads}" if settings.uploads else "kept in memory only",
        ckpt.decision.describe(),
    )  # fmt: skip
    if options.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning(
            "serve.host=%s takes requests from other machines with no token: set %s (or "
            "serve.token) unless a proxy in front of it authenticates",
            options.host, TOKEN_VARIABLE,
        )  # fmt: skip
    stopped: list[int] = []
    # uvicorn finishes the requests in flight, then raises the signal again under the handler it
    # found: this one makes that a normal end (exit 0) instead of a death by SIGTERM.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stopped.append(sig))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise SystemExit(f"the server did not start on {options.host}:{options.port} (see above)")
    log.info("Stopped%s; the requests in flight were answered.", " on SIGTERM" if stopped else "")


def _open_when_started(server: Any, url: str) -> None:
    """The page in the default browser once the server listens (nothing where there is none)."""

    def wait_then_open() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started:
            webbrowser.open(url)

    threading.Thread(target=wait_then_open, daemon=True).start()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
