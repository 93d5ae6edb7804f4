"""A training run from start to end, as ``python -m pneumonia.train`` runs it: every check
before any work, fit, test the best checkpoint, the checks after training and the shift
reference, metrics.json and the figures; a run that stops says how to continue it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from pneumonia.config import as_params, check_train_config
from pneumonia.decision.metrics import confusion_matrix
from pneumonia.decision.predictions import VAL_PREDICTIONS, Predictions, write_predictions
from pneumonia.decision.prior_shift import class_probabilities
from pneumonia.decision.rules import operating_thresholds, uncertain_thresholds
from pneumonia.models.budget import TimeBudget
from pneumonia.models.checkpoint import read_checkpoint
from pneumonia.runs.folders import add_to_run_checkpoint
from pneumonia.runs.layout import metrics_file
from pneumonia.runs.owners import training_folder
from pneumonia.runs.resume import (
    check_resumable,
    earlier_attempt,
    link_resumed_run,
    say_how_to_resume,
)
from pneumonia.system.files import write_text
from pneumonia.system.launch import detect, lightning_ranks_run_this_job
from pneumonia.system.runtime import (
    PrecisionChoice,
    configure_torch,
    quiet_libraries,
    resolve_device,
    resolve_precision,
    step_speedup,
    tune_malloc,
)

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (null entries are off)."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(v) for r in results for k, v in r.items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one model as ``cfg`` says; return the metrics that also go to ``metrics.json``.

    Everything that can be checked is checked before any work: the config's values, the
    checkpoint to resume from (of the same backbone), the run folder (never another run's).
    Once a checkpoint exists, a run that stops for any reason says how to continue it.
    """
    check_train_config(cfg)  # wrong types and ranges, before any work
    tune_malloc()
    configure_torch()
    quiet_libraries()
    output_dir = Path(cfg.paths.output_dir)
    launch = detect()
    if launch.launcher:  # each rank says who it is, in its own log file
        log.info(
            "Rank %d of %d (%s, %d node(s)), process %d, run folder %s", launch.rank,
            launch.processes_per_node * launch.nodes, launch.launcher, launch.nodes,
            os.getpid(), output_dir,
        )  # fmt: skip
    resume_from = Path(cfg.ckpt_path).expanduser() if cfg.get("ckpt_path") else None
    if resume_from is None and (earlier := earlier_attempt(output_dir, cfg)) is not None:
        if earlier.metrics is not None:
            if rank_zero_only.rank == 0:
                log.info(
                    "%s holds this job's finished run (metrics.json, the same settings): not run "
                    "again. Its metrics are this job's.", output_dir,
                )  # fmt: skip
            return earlier.metrics
        resume_from = earlier.last
        if rank_zero_only.rank == 0:
            log.info("%s holds this job's stopped run: continuing from %s", output_dir, resume_from)
    if resume_from is not None:
        check_resumable(read_checkpoint(resume_from), resume_from, cfg)
    held = contextlib.nullcontext()
    if rank_zero_only.rank == 0:  # DDP's other ranks share the folder rank 0 holds
        held = training_folder(output_dir, resume_from=resume_from)
    with held, lightning_ranks_run_this_job():
        try:
            return _train(cfg, output_dir, resume_from)
        except SIGTERMException:  # a scheduler's preemption: Lightning saved what it could
            say_how_to_resume(output_dir, "was stopped (SIGTERM)")
            raise SystemExit(128 + signal.SIGTERM) from None
        except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1)
            say_how_to_resume(output_dir, "was interrupted")
            raise
        except Exception:
            say_how_to_resume(output_dir, "failed (the error follows)")
            raise


def _train(cfg: DictConfig, output_dir: Path, resume_from: Path | None) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    if not datamodule.synthetic:  # (demo data is generated once, by rank 0, in prepare_data)
        datamodule.listed()  # fail before building a model when the data is not there
    device = resolve_device(cfg.trainer.accelerator)
    choice = resolve_precision(cfg.trainer.precision, device, _step_probe(cfg, device))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    checks = cfg.get("checks") or {}
    for cb in callbacks:
        if isinstance(cb, TimeBudget):  # the passes after training count against the budget
            if checks.get("enabled"):
                from pneumonia.evaluation.generalisation import validation_passes

                cb.check_passes = validation_passes(checks.degraded)
            cb.reference_pass = bool((cfg.get("shift") or {}).get("enabled"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, precision=choice.precision, callbacks=callbacks, logger=loggers
    )
    if str(trainer.precision) != choice.precision:  # e.g. 16-mixed on a CPU: Lightning runs bf16
        choice = PrecisionChoice(
            str(trainer.precision), f"Lightning runs it for {choice.precision} on this device"
        )
    if rank_zero_only.rank == 0:
        log.info("Precision %s: %s", choice.precision, choice.reason)
    cfg.trainer.precision = choice.precision  # what ran, in the checkpoint's config and hparams
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    model.run_config = OmegaConf.to_container(cfg, resolve=True)

    if resume_from is not None:
        link_resumed_run(resume_from, output_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if trainer.interrupted:  # stopped without an exception: no metrics, and not a success
        raise SystemExit(1)
    # Weight averaging (callbacks=[default,ema]) would now load a checkpoint's raw weights; its
    # state_dict holds the average, which validate, test and every command read.
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, WeightAveraging)]
    monitored = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
    best = monitored[0].best_model_path if monitored else ""
    if not best:
        log.warning("No best checkpoint was saved: validating and testing the last weights.")
    # The best checkpoint's own validation metrics (not the last epoch's) and its threshold.
    metrics: dict[str, Any] = _scalars(
        trainer.validate(
            model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        )
    )
    validation = model.epoch_predictions.get("val")
    if validation is not None:  # named operating thresholds of the best checkpoint
        metrics["thresholds"] = operating_thresholds(validation.probs, validation.targets)
        if trainer.is_global_zero:
            names, positive = model.class_names, model.positive_index
            classes = (names[1 - positive], names[positive])
            if warning := uncertain_thresholds(metrics["thresholds"], classes):
                log.warning(warning)
            by_class = class_probabilities(validation.probs, validation.targets)  # EM's check
            add_to_run_checkpoint(output_dir, best, {"thresholds": metrics["thresholds"],
                                                     "class_probabilities": by_class})  # fmt: skip
    if cfg.get("test"):
        if datamodule.has_split("test"):
            results = trainer.test(
                model, datamodule=datamodule, ckpt_path=best or None, weights_only=True
            )
            metrics |= _scalars(results)
            last = model.epoch_predictions["test"]
            metrics["test/confusion_matrix"] = confusion_matrix(
                last.probs, last.targets, last.threshold
            ).tolist()
        else:
            log.warning("No test split under %s: skipping the test.", datamodule.root)
    reference = None
    if (cfg.get("shift") or {}).get("enabled") and trainer.is_global_zero:
        reference = _store_shift_reference(cfg, model, datamodule, device, choice.precision, best)
        metrics["shift"] = reference.describe()
    if checks.get("enabled") and trainer.is_global_zero:
        from pneumonia.evaluation.generalisation import log_checks, run_checks

        scored: dict[str, Predictions] = {}
        metrics["checks"] = run_checks(
            model,
            datamodule,
            device=device,
            precision=choice.precision,
            degraded=checks.degraded,
            resamples=checks.resamples,
            seed=cfg.seed,
            shift=reference,
            keep=scored,
        )
        log_checks(metrics["checks"], log)
        # each validation image's prediction: k-fold's out-of-fold rows (pneumonia-aggregate)
        rows = scored["val"].rows(model.class_names, model.positive_index)
        write_predictions(output_dir / VAL_PREDICTIONS, rows)
    elif cfg.data.get("folds") and trainer.is_global_zero:
        log.warning(
            "checks.enabled=false: no %s, so pneumonia-aggregate has no out-of-fold figures "
            "for this fold.", VAL_PREDICTIONS,
        )  # fmt: skip
    metrics["decision"] = model.decision().to_dict()
    metrics["leakage"] = getattr(datamodule, "leakage", [])
    metrics["threshold"] = float(model.threshold)
    metrics["best_model_path"] = best or None
    metrics["precision"] = {"used": choice.precision, "reason": choice.reason}
    if model.lr_scaled is not None:
        metrics["lr_scaling"] = model.lr_scaled.to_dict()
    budgets = [cb for cb in trainer.callbacks if isinstance(cb, TimeBudget) and cb.plan]
    if budgets:
        plan = budgets[0].plan
        metrics["time_budget"] = {
            **asdict(plan),
            "steps_run": trainer.global_step,
            # None: on pace; a step: from there the schedule followed the clock (slower steps)
            "followed_clock_from_step": budgets[0].clock_from_step,
            "repeat_with": plan.repeat_overrides(choice.precision),
        }
    _write_outputs(cfg, model, trainer, metrics, output_dir)
    return metrics


def _step_probe(cfg: DictConfig, device: torch.device):
    """On a GPU, ``precision: auto``'s probe of this run's training step (its model, batch
    size and crop), on a model of its own built with the random streams put back after."""
    if device.type != "cuda" or str(cfg.trainer.precision) != "auto":
        return None

    def probe() -> float:
        with torch.random.fork_rng(devices=[device]):
            model = hydra.utils.instantiate(cfg.model, _convert_="all")
            return step_speedup(model, cfg.data.batch_size, cfg.data.crop_size, device)

    return probe


def _store_shift_reference(cfg, model, datamodule, device, precision: str, best: str):
    """Fit the shift reference of the trained weights and store it in their checkpoint (the
    best one, else last.ckpt), where evaluate, predict, export and the API find it."""
    from pneumonia.evaluation.generalisation import fit_shift_reference

    reference = fit_shift_reference(
        model,
        datamodule,
        device=device,
        precision=precision,
        method=cfg.shift.method,
        flag_rate=cfg.shift.flag_rate,
    )
    target = add_to_run_checkpoint(cfg.paths.output_dir, best, {"shift": reference.to_record()})
    log.info(
        "Shift reference (%s) stored in %s: a shift score above %.4g flags an image as unlike "
        "the training images (%.0f%% of the validation images)",
        reference.method, target or "no checkpoint", reference.threshold,
        100 * reference.flag_rate,
    )  # fmt: skip
    return reference


@rank_zero_only
def _write_outputs(
    cfg: DictConfig, model, trainer: pl.Trainer, metrics: dict[str, Any], output_dir: Path
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(metrics_file(output_dir), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if "test" in model.epoch_predictions:
        _save_test_figures(model, output_dir)
    scalars = {f"hp/{k}": v for k, v in metrics.items() if isinstance(v, float)}
    flat = as_params(OmegaConf.to_container(cfg, resolve=True))
    for tb in (lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)):
        tb.log_hyperparams(flat, scalars)  # the HParams tab compares runs of a sweep
        tb.experiment.flush()
    from pneumonia.runs.tracking import log_run  # MLflow and W&B: params, metrics, figures

    log_run(trainer.loggers, flat, metrics, output_dir, step=trainer.global_step)
    log.info("Metrics: %s", metrics_file(output_dir))
    log.info("Best checkpoint: %s", metrics["best_model_path"])


def _save_test_figures(model, output_dir: Path) -> None:
    from pneumonia.reports.plots import evaluation_figures, save_figure

    last = model.epoch_predictions["test"]
    figures = evaluation_figures(
        last.probs, last.targets, last.threshold, model.class_names, "test"
    )
    for name, fig in figures.items():
        save_figure(fig, output_dir / f"{name}.png")
