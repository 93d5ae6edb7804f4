"""``python -m pneumonia.export ckpt_path=... format=onnx|torchscript``: the network and its
sidecar for a deployment (``pneumonia.inference.deployment`` does the work)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pneumonia.config import CONFIG_DIR
from pneumonia.inference.deployment import export_model
from pneumonia.models.checkpoint import load_checkpoint
from pneumonia.runs.owners import command_folder

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` into ``cfg.output_dir`` (else the run folder); return the
    network's path."""
    with command_folder(cfg, "export") as out:  # checked and held before any work
        ckpt = load_checkpoint(cfg.ckpt_path)
        path, sidecar = export_model(ckpt, cfg.format, out, opset=cfg.opset)
    log.info("Exported %s and %s", path, sidecar)
    return path


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
