"""Every command's failures that a user can cause, walked: each ends in a message that names
the thing that is wrong and the way forward, with a failing exit status and no traceback (the
commands run in this process, as their console scripts would run them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_command as run


def cases(trained: dict, tmp: Path) -> list[tuple[str, list[str], list[str]]]:
    """(command, arguments, what the message must say) for each failure."""
    ckpt = str(trained["ckpt"])
    png = tmp / "scan.ckpt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    empty = tmp / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    earlier = tmp / "earlier"
    earlier.mkdir()
    (earlier / "predictions.csv").write_text("file\n")
    not_predictions = tmp / "other.csv"
    not_predictions.write_text("a,b\n1,2\n")
    real = tmp / "real" / "train" / "NORMAL"  # a data set of one's own (no demo marker)
    real.mkdir(parents=True)
    (real / "a.jpeg").write_bytes(
        next((trained["root"] / "train" / "NORMAL").iterdir()).read_bytes()
    )
    run_dir = [f"hydra.run.dir={tmp / 'runs' / 'r'}"]
    train = ["experiment=demo", f"paths.root_dir={tmp}", *run_dir]
    return [
        ("train", [*train, "model.lr=-1"], ["model.lr=-1", "must be a positive number"]),
        ("train", [*train, "data.fold=2"], ["data.fold=2 does nothing here", "data.folds"]),
        ("train", [*train, "data.synthetic=false", f"data.root={tmp / 'gone'}"],
         [str(tmp / "gone")]),
        ("train", [*train, f"ckpt_path={tmp / 'gone.ckpt'}"], ["gone.ckpt does not exist"]),
        ("train", [*train, f"data.root={tmp / 'real'}"],
         ["data.synthetic=false"]),  # experiment=demo on a real data set
        ("evaluate", [f"ckpt_path={tmp / 'gone.ckpt'}", *run_dir], ["gone.ckpt does not exist"]),
        ("evaluate", [f"ckpt_path={png}", *run_dir], ["is a PNG image, not a checkpoint"]),
        ("evaluate", [f"ckpt_path={ckpt}", "split=tset", *run_dir], ["split='tset'"]),
        ("evaluate", [f"ckpt_path={ckpt}", "prior_shift=EM", *run_dir], ["prior_shift='EM'"]),
        ("evaluate", [f"ckpt_path={ckpt}", f"data.root={tmp / 'gone'}", *run_dir],
         [str(tmp / "gone")]),
        ("evaluate", [f"ckpt_path={ckpt}", f"data.holdout_root={tmp}", *run_dir],
         ["data.holdout_root", "split=holdout"]),
        ("predict", [f"ckpt_path={ckpt}", f"input={tmp / 'gone'}", *run_dir],
         [str(tmp / "gone")]),
        ("predict", [f"ckpt_path={ckpt}", f"input={empty}", *run_dir], ["holds no image files"]),
        ("predict", [f"ckpt_path={ckpt}", f"input={empty}", f"output_dir={earlier}"],
         ["holds an earlier predict's predictions.csv"]),
        ("export", [f"ckpt_path={tmp / 'gone.ckpt'}", *run_dir], ["gone.ckpt does not exist"]),
        ("aggregate", [str(tmp / "gone")], [f"{tmp / 'gone'} is not a folder"]),
        ("aggregate", [str(empty)], ["No finished job"]),
        ("compare", [str(tmp / "gone.csv"), str(not_predictions)], ["gone.csv does not exist"]),
        ("compare", [str(not_predictions), str(not_predictions)], ["other.csv"]),
        ("compare", [str(not_predictions), str(not_predictions), "--split", "val"],
         ["--split=val act only on a checkpoint"]),  # a setting that does nothing
    ]  # fmt: skip


def test_each_commands_failures_end_in_a_message_of_ours(trained: dict, tmp_path: Path) -> None:
    failures = []
    for command, argv, said in cases(trained, tmp_path):
        code, err = run(command, argv)
        wrong = []
        if code == 0:
            wrong.append("exit status 0")
        if "Traceback" in err:
            wrong.append("a traceback")
        wrong += [f"no {s!r}" for s in said if s not in err]
        if "weights_only=False" in err or "To append to your config" in err:
            wrong.append("a library's advice")
        if wrong:
            failures.append(f"{command} {' '.join(argv)}: {', '.join(wrong)}\n{err[-800:]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_refused_command_leaves_the_folder_it_was_given_as_it_was(
    trained: dict, tmp_path: Path, command: str
) -> None:
    """Nothing already written is lost: a refused command writes nothing into an existing
    output folder (Hydra's log and config record included) and removes nothing there."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = {"evaluate": [], "predict": [f"input={tmp_path / 'gone'}"], "export": []}[command]
    code, _ = run(command, [f"ckpt_path={tmp_path / 'gone.ckpt'}", *args, f"output_dir={out}"])
    assert code != 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
