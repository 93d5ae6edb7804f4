"""predict: probabilities for a folder of new images, unreadable files reported per row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pneumonia.data.walk import list_images
from pneumonia.decision.predictions import write_predictions
from pneumonia.evaluation import score
from pneumonia.inference.runner import predict_files
from pneumonia.models.checkpoint import load_checkpoint

CPU = torch.device("cpu")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_predict_lists_unreadable_files_and_agrees_with_evaluate(trained: dict, tmp_path: Path):
    ckpt = load_checkpoint(trained["ckpt"])
    reference = score(ckpt, "test", device=CPU, precision="32-true")
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    picks = reference.files[:3]
    for i, f in enumerate(picks):
        (folder / ("sub" if i == 0 else ".") / f.name).write_bytes(f.read_bytes())
    (folder / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image")
    files = list_images(folder)
    assert [f.name for f in files] == sorted(
        f.name for f in [*picks[1:], folder / "corrupt.jpeg"]
    ) + [picks[0].name]
    rows = predict_files(
        ckpt,
        files,
        batch_size=2,
        device=CPU,
        precision="32-true",
        gradcam_dir=tmp_path / "cam",
        root=folder,
    )
    by_name = {Path(r["file"]).name: r for r in rows}
    assert (
        "cannot" in by_name["corrupt.jpeg"]["error"]
        or "not a readable" in by_name["corrupt.jpeg"]["error"]
    )
    assert by_name["corrupt.jpeg"]["probability"] is None  # no probability, its error instead
    for f in picks:
        i = reference.files.index(f)
        assert float(by_name[f.name]["probability"]) == pytest.approx(
            float(reference.probs[i]), abs=1e-5
        )
        assert by_name[f.name]["error"] == ""
    cams = sorted(p.name for p in (tmp_path / "cam").glob("*.png"))
    assert len(cams) == 3
    assert any(c.startswith(f"sub__{picks[0].name}_") for c in cams)  # its whole path
    for pick in picks:  # drawn on the original image, not on the model's 32 px crop
        (cam,) = [c for c in cams if pick.name in c]
        with Image.open(tmp_path / "cam" / cam) as im, Image.open(pick) as original:
            assert im.size == original.size
            assert im.mode == "RGB"


def test_predict_on_a_missing_input(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        list_images(tmp_path / "empty")


def test_names_that_are_not_utf8_round_trip_and_outputs_are_atomic(
    trained: dict, tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv
    import os
    import shutil

    ckpt = load_checkpoint(trained["ckpt"])
    folder = tmp_path / "incoming"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9_IM-0115-0001.jpeg")  # Latin-1 bytes, not UTF-8
    shutil.copy(sorted((tiny_root / "test" / "NORMAL").iterdir())[0], folder / name)
    rows = predict_files(ckpt, list_images(folder), device=CPU, precision="32-true")
    out = tmp_path / "predictions.csv"
    write_predictions(out, rows)
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        (row,) = list(csv.DictReader(f))
    assert Path(row["file"]) == folder / name  # the same bytes on disk
    assert os.fsencode(row["file"]).endswith(b"caf\xe9_IM-0115-0001.jpeg")
    assert row["probability"]
    # A write that fails half-way leaves the previous file whole and no temporary file behind.
    out.write_text("previous\n")

    def disk_full(self, rows):
        raise OSError("No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_predictions(out, rows)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_evaluate_and_predict_share_one_vocabulary_and_one_csv_layout(
    trained: dict, tmp_path: Path
) -> None:
    import csv

    from pneumonia.config import compose
    from pneumonia.decision.predictions import PREDICTION_COLUMNS
    from pneumonia.evaluate import evaluate
    from pneumonia.predict import predict

    common = [f"ckpt_path={trained['ckpt']}", "batch_size=4", "accelerator=cpu",
              "precision=32-true"]  # fmt: skip
    evaluate(compose("evaluate", [*common, f"output_dir={tmp_path / 'e'}",
                                  "bootstrap.resamples=50"], output_dir=tmp_path))  # fmt: skip
    test_folder = trained["root"] / "test"
    predict(
        compose(
            "predict",
            [*common, f"input={test_folder}", f"output_dir={tmp_path / 'p'}"],
            output_dir=tmp_path,
        )
    )
    tables = {}
    for name in ("e", "p"):
        with open(tmp_path / name / "predictions.csv", newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == PREDICTION_COLUMNS
            tables[name] = {Path(r["file"]).name: r for r in reader}
    assert tables["e"].keys() == tables["p"].keys()
    for name, row in tables["e"].items():
        assert row["label"] == Path(row["file"]).parent.name  # known to evaluate
        assert tables["p"][name]["label"] == ""  # not to predict
        other = tables["p"][name]
        assert row["prediction"] == other["prediction"]
        assert float(row["probability"]) == pytest.approx(float(other["probability"]), abs=1e-5)
        assert float(row["threshold"]) == pytest.approx(float(other["threshold"]))


def test_prior_shift_em_through_the_predict_command(
    trained: dict, forty_test_images: Path, tmp_path: Path
) -> None:
    import csv

    from pneumonia.config import compose
    from pneumonia.decision.calibration import shift_prevalence
    from pneumonia.decision.prior_shift import adapt_to_prevalence
    from pneumonia.predict import predict

    common = [f"ckpt_path={trained['ckpt']}", f"input={forty_test_images}",
              "accelerator=cpu", "precision=32-true"]  # fmt: skip
    tables = {}
    for shift in ("none", "em"):
        out = tmp_path / shift
        predict(compose("predict", [*common, f"prior_shift={shift}", f"output_dir={out}"],
                        output_dir=tmp_path))  # fmt: skip
        with open(out / "predictions.csv", newline="") as f:
            tables[shift] = [float(r["probability"]) for r in csv.DictReader(f)]
    plain = torch.tensor(tables["none"], dtype=torch.float64)
    ckpt = load_checkpoint(trained["ckpt"])
    _, record = adapt_to_prevalence(plain, ckpt.decision, "em")
    expected = shift_prevalence(plain, 0.5, record["estimated_prevalence"])
    torch.testing.assert_close(torch.tensor(tables["em"], dtype=torch.float64), expected,
                               atol=2e-6, rtol=0)  # fmt: skip
    assert not torch.allclose(expected, plain)


def test_prior_shift_em_on_a_few_images_is_refused_before_any_work(
    trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    monkeypatch.setattr(type(ckpt.preprocessing), "load", lambda *a: pytest.fail("scored"))
    files = sorted((trained["root"] / "test").rglob("*.jpeg"))[:3]
    with pytest.raises(ValueError, match=r"at least 30.*there are 3"):
        predict_files(ckpt, files, device=CPU, precision="32-true", prior_shift="em")


def test_small_images_follow_one_rule_in_predict_evaluate_and_the_api(
    trained: dict, tmp_path: Path
) -> None:
    """The checkpoint resizes to 40 px and crops 32, with data.max_upscale 4: a 10 x 10 image
    (4x, narrower than the crop) is scored, an 8 x 8 one (5x) is refused, naming the setting,
    until max_upscale=5 is given; evaluate, compare and the API apply the same rule."""
    import csv
    import json

    import numpy as np

    import pneumonia
    from pneumonia.config import compose
    from pneumonia.data import BadImagesError
    from pneumonia.evaluate import evaluate
    from pneumonia.predict import predict

    folder = tmp_path / "small"
    for label, side in (("NORMAL", 10), ("PNEUMONIA", 8)):
        (folder / label).mkdir(parents=True)
        for k in range(2):
            pixels = np.random.default_rng(k).integers(0, 255, (side, side), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"IM-{side}{k}-0001.png")
        for f in sorted((trained["root"] / "test" / label).glob("*.jpeg"))[:2]:
            (folder / label / f.name).write_bytes(f.read_bytes())
    common = [f"ckpt_path={trained['ckpt']}", "accelerator=cpu", "precision=32-true"]

    def predicted(*overrides: str) -> dict[str, dict]:
        out = tmp_path / f"p{len(overrides)}"
        predict(compose("predict", [*common, f"input={folder}", f"output_dir={out}", *overrides],
                        output_dir=tmp_path))  # fmt: skip
        with open(out / "predictions.csv", newline="") as f:
            return {Path(r["file"]).name: r for r in csv.DictReader(f)}

    rows = predicted()
    assert len(rows) == 8
    for name, row in rows.items():
        if name.startswith("IM-8"):
            assert row["probability"] == ""
            assert "8x8 pixels" in row["error"]
            assert "data.max_upscale" in row["error"]
        else:
            assert row["error"] == ""
            assert 0 <= float(row["probability"]) <= 1
    assert all(r["error"] == "" for r in predicted("max_upscale=5").values())
    with pytest.raises(ValueError, match=r"max_upscale=0\.5: must be null or a number >= 1"):
        predicted("max_upscale=0.5")  # before the checkpoint is read

    evaluated = [f"data.root={folder}", "data.cache=false", "bootstrap.resamples=20", "mistakes=0"]
    run = [*common, *evaluated]
    with pytest.raises(BadImagesError, match=r"(?s)IM-80-0001\.png.*data\.max_upscale"):
        evaluate(compose("evaluate", [*run, f"output_dir={tmp_path / 'e1'}"], output_dir=tmp_path))
    result = evaluate(compose("evaluate", [*run, f"output_dir={tmp_path / 'e2'}",
                                           "max_upscale=5"], output_dir=tmp_path))  # fmt: skip
    assert result["num_images"] == 8

    from pneumonia.compare import main as compare

    both = [str(trained["ckpt"]), str(trained["ckpt"]), "--data-root", str(folder),
            "--accelerator", "cpu", "--precision", "32-true", "--resamples", "20"]  # fmt: skip
    assert compare([*both, "--out", str(tmp_path / "c1")]) == 1  # refused, nothing written
    assert not (tmp_path / "c1").exists()
    assert compare([*both, "--out", str(tmp_path / "c2"), "--max-upscale", "5"]) == 0
    assert json.loads((tmp_path / "c2" / "compare.json").read_text())["num_images"] == 8

    eight = folder / "PNEUMONIA" / "IM-80-0001.png"
    table = pneumonia.load(trained["ckpt"], device="cpu", precision="32-true").predict([eight])
    assert "data.max_upscale" in table["error"][0]
    clf = pneumonia.load(trained["ckpt"], device="cpu", precision="32-true", max_upscale=5)
    assert clf.predict([eight])["error"][0] == ""
    assert load_checkpoint(trained["ckpt"]).preprocessing.max_upscale == 4.0  # the run's record


def test_gradcam_names_are_one_per_input_and_short_enough_for_any_folder(
    trained: dict, tmp_path: Path
) -> None:
    """x.png and x.jpeg, sub/b.png and sub__b.png each keep their own overlay (predict wrote 2
    for 4), and folders nested past the file-name limit still get one (it was ENAMETOOLONG,
    and predictions.csv was lost)."""
    import os

    from pneumonia.inference.explain import gradcam_name

    image = sorted((trained["root"] / "test" / "NORMAL").iterdir())[0].read_bytes()
    folder = tmp_path / "in"
    deep = folder.joinpath(*["a_rather_long_folder_name_of_a_hospital_export"] * 6)
    names = ["x.png", "x.jpeg", "sub/b.png", "sub__b.png", f"{deep.relative_to(folder)}/y.png"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(image)
    files = list_images(folder)
    assert len(files) == 5
    cams = {gradcam_name(f, i, folder) for i, f in enumerate(files)}
    assert len(cams) == 5
    assert all(len(os.fsencode(c)) < 200 for c in cams)
    ckpt = load_checkpoint(trained["ckpt"])
    rows = predict_files(ckpt, files, device=CPU, precision="32-true",
                         gradcam_dir=tmp_path / "cam", root=folder)  # fmt: skip
    assert all(r["probability"] is not None for r in rows)
    assert {p.name for p in (tmp_path / "cam").iterdir()} == cams
