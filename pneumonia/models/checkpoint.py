"""Loading checkpoints written by ``pneumonia.train`` safely (``weights_only=True``)."""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pneumonia.data.images import is_upscale_limit
from pneumonia.data.preprocessing import Preprocessing, PreprocessingError
from pneumonia.decision.calibration import logit
from pneumonia.decision.rules import Decision
from pneumonia.decision.shift import ShiftReference
from pneumonia.errors import InputNotFoundError, InputValueError
from pneumonia.models.classifier import PneumoniaClassifier
from pneumonia.system.files import atomic_path


class CheckpointError(InputValueError):
    """A file that is not a usable pneumonia checkpoint."""


@dataclass
class LoadedCheckpoint:
    """A training run's checkpoint, read for inference. Every fact is read from the one place
    the checkpoint holds it: class names and the decision's parameters from the model's
    hyperparameters, the threshold and temperature from its buffers, the preprocessing from
    its record."""

    model: PneumoniaClassifier  # in eval mode, on CPU
    path: Path
    preprocessing: Preprocessing  # the eval preprocessing the model was trained with
    data_args: dict[str, Any]  # the training run's other DataModule arguments (root, split...)
    config: dict[str, Any] | None  # the training run's whole Hydra config, as a record
    shift: ShiftReference | None = None  # what its training images looked like (None: older)
    # named operating thresholds chosen on validation (decision.operating_thresholds)
    thresholds: dict[str, dict[str, Any]] | None = None
    # what pneumonia.recalibrate re-fitted on a site's images (decision.recalibration)
    recalibration: dict[str, Any] | None = None
    # the probabilities of the images the decision was fitted on, by class: EM's check
    # (decision.prior_shift.class_probabilities); None: a checkpoint of an older version
    class_probabilities: dict[str, Any] | None = None

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def use_max_upscale(self, max_upscale: float | None) -> None:
        """Refuse images by another enlargement limit than the training run's
        (``data.max_upscale``: images the resize would enlarge more are bad images); None keeps
        the run's. Only which images are accepted changes, never the pixels of one.

        Raises:
            InputValueError: not a number >= 1.
        """
        if max_upscale is None:
            return
        if not is_upscale_limit(max_upscale):
            raise InputValueError(
                f"max_upscale={max_upscale!r} must be a number >= 1 (how many times the resize "
                f"may enlarge an image; {self.path.name} was trained with "
                f"{self.preprocessing.max_upscale:g})"
            )
        self.preprocessing = replace(self.preprocessing, max_upscale=max_upscale)

    def use_threshold(self, choice: str | float | None) -> None:
        """Decide at another threshold than the stored one: a name of the checkpoint's table
        (``spec95``: the threshold that reached 95% specificity on validation), or a number.
        None keeps the stored one. The decision record then names it as its rule.

        Raises:
            InputValueError: an unknown name (the names are listed) or a number outside (0, 1).
        """
        if choice is None or choice == "stored":
            return
        table = self.thresholds or {}
        if isinstance(choice, (int, float)) and not isinstance(choice, bool):
            if not 0 < float(choice) < 1:
                raise InputValueError(f"threshold={choice}: a threshold is a probability in (0, 1)")
            value = float(choice)
        elif str(choice) in table:
            value = float(table[str(choice)]["threshold"])
        else:
            names = ", ".join(sorted(table)) or "none (a checkpoint of an older version)"
            raise InputValueError(
                f"threshold={choice} is not a threshold of {self.path.name}: its named thresholds "
                f"are {names}; or give a number in (0, 1), or leave it out for the stored one "
                f"({self.threshold:.3f})."
            )
        self.model.threshold.fill_(value)
        self.model.hparams.threshold_rule = choice if isinstance(choice, str) else value

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def positive_index(self) -> int:
        return self.model.positive_index

    @property
    def decision(self) -> Decision:
        """Threshold rule, cost ratio, prevalence and temperature behind the threshold, and the
        re-fit on a site's images, if any."""
        return replace(self.model.decision(), recalibration=self.recalibration)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)", re.IGNORECASE)


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, without terminal colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# What a file that is not a checkpoint starts with, and what to call it.
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
    b"DICM": "a DICOM file",  # at offset 128, after the preamble
}


def _other_format(path: Path) -> str | None:
    """What ``path`` is, when its first bytes say it is not a checkpoint; None otherwise.

    A checkpoint is a zip archive (``torch.save``) or, from old versions of torch, a pickle.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature) or head[128:132] == signature:
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None  # unknown binary: torch.load will say what it makes of it
    return "a JSON file" if text.lstrip()[:1] in ("{", "[") else "a text file"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw dict of a ``pneumonia.train`` checkpoint, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated file, or a checkpoint from another project.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*.ckpt"))[:5]
        hint = (
            f" It holds: {', '.join(found)}. Pass one file, e.g. ckpt_path={path / found[-1]}."
            if found
            else " It holds no .ckpt file: pass one from a training run's checkpoints/ folder."
        )
        raise CheckpointError(f"ckpt_path={path} is a folder, not a checkpoint file.{hint}")
    if not path.is_file():
        raise InputNotFoundError(
            f"ckpt_path={path} does not exist. Checkpoints are in a training run's "
            "checkpoints/ folder, e.g. outputs/train/runs/<run>/checkpoints/last.ckpt."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): its writing was interrupted. Use another checkpoint "
            "of the run (checkpoints/last.ckpt or the best one)."
        )
    kind = _other_format(path)
    if kind:
        raise CheckpointError(
            f"ckpt_path={path} is {kind}, not a checkpoint. Pass a .ckpt file from a training "
            "run's checkpoints/ folder, e.g. outputs/train/runs/<run>/checkpoints/last.ckpt."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text suggests weights_only=False, which would run what the file carries
        carried = _GLOBAL.search(_ANSI.sub("", str(e)))
        what = f" (it carries {carried.group(1)})" if carried else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects that safe loading refuses{what}. "
            "pneumonia.train checkpoints hold only tensors and plain values: this file was "
            "written by other code, and loading it unsafely would run whatever code it "
            "carries. Pass a checkpoint of a pneumonia training run."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt? {type(e).__name__}: "
            f"{_first_line(e)}). Use another checkpoint of the run."
        ) from e
    if not isinstance(ckpt, dict) or "pneumonia" not in ckpt or "hyper_parameters" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} was not written by pneumonia.train (no 'pneumonia' section; found {keys}). "
            "Pass a checkpoint from a pneumonia training run."
        )
    return ckpt


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the classifier from a Lightning checkpoint without unpickling any object.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated file, a checkpoint from another project, one without its
            preprocessing record, or one that does not fit this version's model.
    """
    path = Path(path).expanduser()
    ckpt = read_checkpoint(path)
    meta = ckpt["pneumonia"]
    try:
        preprocessing = Preprocessing.from_dict(meta.get("preprocessing"))
    except (PreprocessingError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path} does not record the preprocessing its model was trained with ({e}). "
            "Checkpoints written before preprocessing was stored cannot be evaluated safely: "
            "retrain with this version."
        ) from e
    hparams = dict(ckpt["hyper_parameters"])
    # The state dict holds every weight: no download, and no compile for inference.
    hparams.update(weights=None, compile=False)
    try:
        model = PneumoniaClassifier(**hparams)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} does not match this version's model: {e}") from e
    model.preprocessing = preprocessing.to_dict()
    model.eval()
    # Checkpoints of format 1 also hold the preprocessing fields among the DataModule's
    # arguments: the record above is the one that counts.
    data_args = {
        k: v
        for k, v in ckpt.get("datamodule_hyper_parameters", {}).items()
        if k not in preprocessing.to_dict()
    }
    return LoadedCheckpoint(
        model=model,
        path=path,
        preprocessing=preprocessing,
        data_args=data_args,
        config=meta.get("config"),
        shift=ShiftReference.from_record(meta.get("shift")),
        thresholds=meta.get("thresholds"),
        recalibration=meta.get("recalibration"),
        class_probabilities=meta.get("class_probabilities"),
    )


def add_to_checkpoint(path: str | Path, records: dict[str, Any]) -> None:
    """Store each of ``records`` (key -> record) in the checkpoint's "pneumonia" section, in
    one write, atomically (the file is whole before or after, never half-written)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    ckpt["pneumonia"] |= records
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def write_refitted(
    path: str | Path,
    dest: str | Path,
    decision: Decision,
    *,
    thresholds: dict[str, dict[str, Any]],
    recalibration: dict[str, Any],
    class_probabilities: dict[str, Any] | None,
) -> Path:
    """A copy of the checkpoint at ``path`` with another ``decision`` (its temperature,
    reference prevalence, prevalence, threshold rule and threshold), named ``thresholds`` and the
    ``recalibration`` record and the site's ``class_probabilities``, written atomically to
    ``dest``; ``path`` is only read."""
    path, dest = Path(path), Path(dest)
    if dest.resolve() == path.resolve():
        raise InputValueError(f"{dest}: a re-fitted checkpoint never replaces its original")
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    reference_logit = logit(decision.reference_prevalence)
    for name, value in (("threshold", decision.threshold), ("temperature", decision.temperature),
                        ("reference_logit", reference_logit)):  # fmt: skip
        state[name] = torch.tensor(value, dtype=state[name].dtype)
    ckpt["hyper_parameters"].update(
        threshold_rule=decision.threshold_rule, prevalence=decision.prevalence
    )
    ckpt["pneumonia"] |= {"thresholds": thresholds, "recalibration": recalibration,
                          "class_probabilities": class_probabilities}  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        torch.save(ckpt, tmp)
    return dest
