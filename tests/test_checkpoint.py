"""Loading checkpoints safely: clear errors, and everything inference needs travels with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pneumonia.data import Preprocessing
from pneumonia.models.checkpoint import CheckpointError, load_checkpoint


def test_checkpoint_errors_are_clear(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "other_project.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, foreign)
    with pytest.raises(CheckpointError, match="not written by pneumonia.train"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled_model.ckpt"
    torch.save({"model": Path("an arbitrary object")}, pickled)  # needs unpickling a class
    with pytest.raises(CheckpointError, match="pickled Python objects") as info:
        load_checkpoint(pickled)
    assert "\x1b" not in str(info.value)  # no terminal colour codes in the message
    assert "pathlib" in str(info.value)  # what it carries, named
    assert "weights_only=False" not in str(info.value)  # never torch's advice to run it
    assert "weights_only" not in str(info.value)
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_checkpoint(empty)
    run = trained["ckpt"].parent.parent
    with pytest.raises(CheckpointError, match=r"is a folder.*last\.ckpt"):
        load_checkpoint(run)


def test_loaded_checkpoint_carries_threshold_classes_and_preprocessing(trained: dict) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    assert ckpt.threshold == pytest.approx(trained["metrics"]["threshold"])
    assert ckpt.class_names == ["NORMAL", "PNEUMONIA"]
    # The training run's preprocessing (tiny_overrides: resize 40, crop 32), stored explicitly.
    assert ckpt.preprocessing == Preprocessing(resize_size=40, crop_size=32)
    raw = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert raw["pneumonia"]["preprocessing"] == ckpt.preprocessing.to_dict()
    assert not ckpt.model.training


@pytest.mark.parametrize(
    "record",
    [None, {"resize_size": 40, "crop_size": 32}],
    ids=["no preprocessing", "incomplete preprocessing"],
)
def test_checkpoint_without_its_preprocessing_is_refused(
    trained: dict, tmp_path: Path, record
) -> None:
    raw = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    if record is None:
        del raw["pneumonia"]["preprocessing"]
    else:
        raw["pneumonia"]["preprocessing"] = record
    path = tmp_path / "old.ckpt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"does not record the preprocessing.*retrain"):
        load_checkpoint(path)


def test_a_checkpoint_of_format_1_still_loads(trained: dict, tmp_path: Path) -> None:
    """Format 1 copied the threshold, classes and decision into its "pneumonia" section and the
    preprocessing fields among the DataModule's arguments; those copies are ignored."""
    raw = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    current = load_checkpoint(trained["ckpt"])
    raw["pneumonia"] = {
        **{k: v for k, v in raw["pneumonia"].items() if k != "format"},
        "class_names": ["NORMAL", "PNEUMONIA"],
        "positive_index": 1,
        "threshold": 0.123,  # a stale copy: the buffer is what counts
        "decision": {"threshold_rule": "bayes", "threshold": 0.123},
    }
    raw["datamodule_hyper_parameters"] |= {"resize_size": 999, "crop_size": 998}
    old = tmp_path / "format1.ckpt"
    torch.save(raw, old)
    ckpt = load_checkpoint(old)
    assert ckpt.threshold == current.threshold == float(raw["state_dict"]["threshold"])
    assert ckpt.class_names == current.class_names
    assert ckpt.decision == current.decision
    assert ckpt.preprocessing == current.preprocessing  # from the record, not the copies
    assert "resize_size" not in ckpt.data_args
    assert ckpt.data_args["root"] == current.data_args["root"]


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(64), "a JPEG image"),
        (b'{"best_model_path": "x.ckpt"}\n', "a JSON file"),
        (b"epoch=3 val/loss=0.21\n", "a text file"),
        (bytes(128) + b"DICM" + bytes(64), "a DICOM file"),
    ],
)
def test_a_file_of_another_kind_as_checkpoint_is_named_from_its_first_bytes(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"is {kind}, not a checkpoint.*last\.ckpt"):
        load_checkpoint(path)
