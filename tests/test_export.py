"""export: ONNX / TorchScript files that compute what PyTorch computes, with a full sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumonia.data import Preprocessing
from pneumonia.inference.deployment import export_model
from pneumonia.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(trained: dict, tmp_path: Path, fmt: str) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    path, sidecar = export_model(ckpt, fmt, tmp_path)
    meta = json.loads(sidecar.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "model.json"])
    assert meta["threshold"] == pytest.approx(ckpt.threshold)
    pre = meta["preprocessing"]
    assert Preprocessing.from_dict({k: pre[k] for k in Preprocessing().to_dict()}) == (
        ckpt.preprocessing
    )
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert (pre["resize_size"], pre["crop_size"], pre["interpolation"]) == (40, 32, "bicubic")
    steps = " ".join(pre["steps"])
    for needle in ("gray", "bicubic", "center crop 32", "repeat the gray channel"):
        assert needle in steps, needle
    assert meta["positive_class"] == "PNEUMONIA"
    assert meta["decision_rule"]["threshold_rule"] == "bayes"
    # A calibrated model whose threshold only holds on calibrated probabilities: the export
    # must compute what predict computes, not the raw softmax.
    ckpt.model.temperature.fill_(2.5)
    ckpt.model.reference_logit.fill_(0.7)
    path, _ = export_model(ckpt, fmt, tmp_path)
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export example
    with torch.no_grad():
        positive = ckpt.model.probabilities(x)
        expected = torch.stack([1 - positive, positive], dim=1).numpy()
        assert not np.allclose(expected, torch.softmax(ckpt.model(x), dim=1).numpy(), atol=1e-3)
        features = ckpt.model.features(x)
        expected_shift = ckpt.shift.score(features, ckpt.model.head(features)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got, shift = session.run(["probabilities", "shift_score"], {"image": x.numpy()})
    else:
        got, shift = (t.detach().numpy() for t in torch.jit.load(str(path))(x))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The shift score travels with the export: the same numbers as predict's, and the sidecar
    # holds the threshold that reads them.
    np.testing.assert_allclose(shift, expected_shift, rtol=1e-4, atol=1e-3)
    assert meta["shift"]["threshold"] == pytest.approx(ckpt.shift.threshold)
    assert meta["shift"]["output"]["name"] == "shift_score"


def test_the_export_command_writes_the_pair_into_its_folder(
    trained: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pneumonia.config import compose
    from pneumonia.export import export

    out = tmp_path / "exported"
    cfg = compose(
        "export",
        [f"ckpt_path={trained['ckpt']}", "format=torchscript", f"output_dir={out}"],
        output_dir=tmp_path,
    )
    path = export(cfg)
    assert path == out / "model.pt"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["model_file"] == "model.pt"
    assert meta["source_checkpoint"] == str(trained["ckpt"])
    probabilities, shift = torch.jit.load(str(path))(torch.zeros(1, 3, 32, 32))
    assert probabilities.shape == (1, 2)
    assert shift.shape == (1,)


def test_a_failed_export_leaves_the_previous_pair_whole(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the network is written: neither file is touched."""
    ckpt = load_checkpoint(trained["ckpt"])
    export_model(ckpt, "torchscript", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_model(ckpt, "torchscript", tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files
