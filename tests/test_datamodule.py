"""ChestXRayDataModule: splits, class weights, transforms, bad input and synthetic data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.data import BadImagesError, ChestXRayDataModule
from pneumonia.data.images import load_resized
from pneumonia.data.patients import patient_id
from pneumonia.data.synthetic import SYNTHETIC_MARKER, generate_synthetic_dataset
from pneumonia.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SMALL = {"resize_size": 40, "crop_size": 32, "batch_size": 8}


def make_dm(root: Path, tmp_path: Path, **kwargs) -> ChestXRayDataModule:
    return ChestXRayDataModule(root=root, cache_dir=tmp_path / "cache", **{**SMALL, **kwargs})


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".jpeg")


# ----------------------------------------------------------------------------- classes & splits
def test_classes_counts_and_class_weights(tiny_root: Path, tmp_path: Path) -> None:
    dm = make_dm(tiny_root, tmp_path, val_split="official")
    dm.setup("fit")
    assert dm.classes == ["NORMAL", "PNEUMONIA"]
    assert dm.num_classes == 2
    n_normal = count_images(tiny_root / "train" / "NORMAL")
    n_pneu = count_images(tiny_root / "train" / "PNEUMONIA")
    assert dm.split_counts("train") == [n_normal, n_pneu]
    n = n_normal + n_pneu
    expected = torch.tensor([n / (2 * n_normal), n / (2 * n_pneu)])
    assert dm.class_weights.dtype == torch.float32
    torch.testing.assert_close(dm.class_weights, expected)
    assert dm.files("val") == sorted(
        (tiny_root / "val").rglob("*.jpeg"), key=lambda p: (p.parent.name, p.name)
    )


def test_patient_split_pools_train_and_val_and_never_shares_a_patient(
    tiny_root: Path, tmp_path: Path
) -> None:
    dm = make_dm(tiny_root, tmp_path, val_fraction=0.3)
    dm.setup("fit")
    train, val = dm.files("train"), dm.files("val")
    pooled = set((tiny_root / "train").rglob("*.jpeg")) | set((tiny_root / "val").rglob("*.jpeg"))
    assert set(train) | set(val) == pooled
    assert not set(train) & set(val)
    assert not {patient_id(f) for f in train} & {patient_id(f) for f in val}
    assert all(isinstance(f, Path) for f in train)
    again = make_dm(tiny_root, tmp_path, val_fraction=0.3)
    again.setup("fit")
    assert again.files("val") == val


def test_official_val_split_warns_when_small(tiny_root: Path, tmp_path: Path) -> None:
    dm = make_dm(tiny_root, tmp_path, val_split="official")
    with pytest.warns(UserWarning, match="only 6 images"):
        dm.setup("fit")
    assert len(dm.files("val")) == 6


def test_missing_val_is_carved_from_train(tiny_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(tiny_copy / "val")
    dm = make_dm(tiny_copy, tmp_path, val_split="official")
    with pytest.warns(UserWarning, match="no val/ folder"):
        dm.setup("fit")
    assert dm.files("val")
    assert set(dm.files("val")) <= set((tiny_copy / "train").rglob("*.jpeg"))


def test_missing_test_split_says_so(tiny_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(tiny_copy / "test")
    dm = make_dm(tiny_copy, tmp_path)
    dm.setup("test")
    assert not dm.has_split("test")
    with pytest.raises(FileNotFoundError, match="There is no test split"):
        dm.test_dataloader()


def test_test_split_loads(tiny_root: Path, tmp_path: Path) -> None:
    dm = make_dm(tiny_root, tmp_path)
    dm.setup("test")
    assert len(dm.files("test")) == 9
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (8, 3, 32, 32)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1][:8]


# ----------------------------------------------------------------------------- bad images
def _break_some(root: Path) -> list[Path]:
    normal = sorted((root / "train" / "NORMAL").glob("*.jpeg"))
    pneu = sorted((root / "train" / "PNEUMONIA").glob("*.jpeg"))
    zero, garbage, truncated = normal[0], normal[1], pneu[0]
    zero.write_bytes(b"")
    garbage.write_bytes(b"<html>not found</html>")
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return [zero, garbage, truncated]


@pytest.mark.parametrize("cache", [True, False])
def test_bad_images_are_listed_in_one_error(tiny_copy: Path, tmp_path: Path, cache: bool) -> None:
    broken = _break_some(tiny_copy)
    dm = make_dm(tiny_copy, tmp_path, cache=cache)
    with pytest.raises(BadImagesError) as info:
        dm.setup("fit")
    message = str(info.value)
    for path in broken:
        assert path.name in message
    assert "empty file" in message
    assert "data.on_bad_image=skip" in message


@pytest.mark.parametrize("cache", [True, False])
def test_bad_images_skipped_with_a_warning(tiny_copy: Path, tmp_path: Path, cache: bool) -> None:
    broken = _break_some(tiny_copy)
    dm = make_dm(tiny_copy, tmp_path, cache=cache, on_bad_image="skip")
    with pytest.warns(UserWarning, match="Skipping 3 unusable") as record:
        dm.setup("fit")
    text = "\n".join(str(w.message) for w in record)
    assert all(p.name in text for p in broken)
    kept = set(dm.files("train")) | set(dm.files("val"))
    assert not kept & set(broken)
    assert len(dm.skipped) == 3
    # every remaining image loads: nothing can fail mid-epoch
    assert sum(len(labels) for _, labels in dm.train_dataloader()) == len(dm.files("train"))


def test_oversized_image_is_refused(tiny_copy: Path, tmp_path: Path) -> None:
    big = tiny_copy / "train" / "NORMAL" / "IM-9999-0001.png"
    Image.fromarray(np.zeros((120, 120), np.uint8)).save(big)
    with pytest.raises(BadImagesError, match=r"IM-9999-0001\.png.*decompression bomb"):
        make_dm(tiny_copy, tmp_path, max_pixels=100 * 100).setup("fit")


# ----------------------------------------------------------------------------- transforms
def test_batches_are_float_rgb_with_imagenet_normalisation(tiny_root: Path, tmp_path: Path) -> None:
    dm = make_dm(tiny_root, tmp_path)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32
    assert images.shape == (8, 3, 32, 32)
    assert labels.dtype == torch.long
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = images * std + mean  # undo the normalisation: gray repeated in 3 channels
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)
    assert pixels.min() >= -1e-5
    assert pixels.max() <= 1.0 + 1e-5


def test_eval_transforms_are_deterministic_and_train_ones_are_not(
    tiny_root: Path, tmp_path: Path
) -> None:
    dm = make_dm(tiny_root, tmp_path)
    dm.setup("fit")
    first = torch.cat([x for x, _ in dm.val_dataloader()])
    second = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(first, second)
    torch.manual_seed(0)
    a = next(iter(dm._loader("val", dm.train_transform, shuffle=False, shard=False)))[0]
    b = next(iter(dm._loader("val", dm.train_transform, shuffle=False, shard=False)))[0]
    assert not torch.equal(a, b)


def test_augmentation_can_be_switched_off(tiny_root: Path, tmp_path: Path) -> None:
    dm = make_dm(tiny_root, tmp_path, hflip_prob=0.0, rotation_degrees=0.0, translate=0.0)
    dm.setup("fit")
    train_view = next(iter(dm._loader("val", dm.train_transform, shuffle=False, shard=False)))[0]
    eval_view = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(train_view, eval_view)


def test_no_horizontal_flip_unless_asked_for(tiny_root: Path, tmp_path: Path) -> None:
    from torchvision.transforms import v2

    from pneumonia.config import compose

    def flips(dm: ChestXRayDataModule) -> list:
        return [t for t in dm.train_transform.transforms if isinstance(t, v2.RandomHorizontalFlip)]

    assert flips(make_dm(tiny_root, tmp_path)) == []
    assert compose("train").data.hflip_prob == 0.0
    assert [f.p for f in flips(make_dm(tiny_root, tmp_path, hflip_prob=0.5))] == [0.5]
    # the notebook's own recipe keeps its flip, for an honest comparison
    assert compose("train", ["experiment=notebook_recipe"]).data.hflip_prob == 0.5


# ----------------------------------------------------------------------------- synthetic data
def test_synthetic_generator_is_deterministic_and_labelled(tmp_path: Path) -> None:
    counts = {"train": (3, 4), "test": (2, 2)}
    a = generate_synthetic_dataset(tmp_path / "a", counts, seed=5, min_size=40, max_size=50)
    b = generate_synthetic_dataset(tmp_path / "b", counts, seed=5, min_size=40, max_size=50)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.jpeg"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.jpeg"))
    assert len(files_a) == 11
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert "SYNTHETIC" in (a / SYNTHETIC_MARKER).read_text()
    patients = {patient_id(f) for f in files_a}
    assert not any(p.startswith("file:") for p in patients)
    assert len(patients) < len(files_a)  # several images per patient


def test_demo_datamodule_generates_data_once_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "demo"
    dm = make_dm(root, tmp_path, synthetic=True)
    dm.prepare_data()
    dm.setup("fit")
    assert (root / SYNTHETIC_MARKER).is_file()
    assert dm.split_counts("train")[0] > 0
    said = [r for r in caplog.records if "holds SYNTHETIC" in r.getMessage()]
    assert len(said) == 1  # once per run, in the log (and so in the run's train.log)
    assert said[0].levelname == "WARNING"
    stamp = (root / SYNTHETIC_MARKER).stat().st_mtime_ns
    caplog.clear()
    make_dm(root, tmp_path, synthetic=True).setup("fit")
    assert (root / SYNTHETIC_MARKER).stat().st_mtime_ns == stamp
    assert sum("holds SYNTHETIC" in r.getMessage() for r in caplog.records) == 1


def test_synthetic_refuses_to_write_into_real_data(tiny_copy: Path, tmp_path: Path) -> None:
    """experiment=demo pointed at real images: the fix the user wants is data.synthetic=false
    (it said to point data.root at an empty folder)."""
    (tiny_copy / SYNTHETIC_MARKER).unlink()
    before = sorted(tiny_copy.rglob("*"))
    with pytest.raises(FileExistsError, match="it looks like a data set") as info:
        make_dm(tiny_copy, tmp_path, synthetic=True).setup("fit")
    assert "add data.synthetic=false" in str(info.value)
    assert sorted(tiny_copy.rglob("*")) == before  # nothing written into it
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="point data.root at an empty or new folder") as info:
        make_dm(tmp_path / "notes", tmp_path, synthetic=True).setup("fit")
    assert "data.synthetic=false" not in str(info.value)  # not a data set: no such advice


# ----------------------------------------------------------------------------- real data
@pytest.mark.real_data
@pytest.mark.slow
def test_real_kermany_loads_with_patient_split(kermany_224: Path, tmp_path: Path) -> None:
    dm = ChestXRayDataModule(root=kermany_224, cache_dir=tmp_path / "cache", batch_size=4)
    dm.setup("fit")
    assert dm.classes == ["NORMAL", "PNEUMONIA"]
    train, val = dm.files("train"), dm.files("val")
    assert len(train) + len(val) == 5216 + 16
    assert not dm.patients("train") & dm.patients("val")
    n_val = len(val) / (len(train) + len(val))
    assert 0.09 < n_val < 0.11
    # the training split's n / (k * n_c): 1,341 NORMAL and 3,875 PNEUMONIA give about these
    torch.testing.assert_close(dm.class_weights, torch.tensor([1.94, 0.67]), atol=0.02, rtol=0)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 224, 224)
    assert torch.isfinite(images).all()

    # cache == decode, on real files (a few hundred of them, including the grayscale val ones)
    fresh = ChestXRayDataModule(root=kermany_224, cache=False, batch_size=4)
    subset = sorted(val)[:150] + sorted((kermany_224 / "val").rglob("*.jpeg"))
    for path in subset:
        cached_pixels = dm._decoders["root"](path)
        decoded = fresh.preprocessing.decode(path)
        assert np.array_equal(cached_pixels, decoded), path


@pytest.mark.real_data
def test_real_originals_decode_to_the_training_resolution(originals: Path) -> None:
    paths = sorted(originals.rglob("*.jpeg"))[::20]
    for path in paths:
        pixels = load_resized(path, 256, max_pixels=10**8, interpolation="bicubic", mode="shorter")
        assert min(pixels.shape) == 256
        assert 20 < pixels.mean() < 235  # a real radiograph, not a blank decode


@pytest.mark.real_data
def test_the_default_training_config_accepts_every_real_original(
    originals: Path, tmp_path: Path
) -> None:
    """The Kaggle originals as a user points the main job at them: all 180 are X-rays the
    model can use, the 460 x 157 and 461 x 175 ones (narrower than the 224 crop) included."""
    from hydra.utils import instantiate

    from pneumonia.config import compose

    root = tmp_path / "chest_xray"
    root.mkdir()
    (root / "train").symlink_to(originals.resolve(), target_is_directory=True)
    cfg = compose("train", [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"],
                  output_dir=tmp_path / "run")  # fmt: skip
    assert cfg.data.on_bad_image == "error"  # a refused file would stop setup
    dm = instantiate(cfg.data)
    dm.setup("fit")
    used = {p.name for p in dm.files("train") + dm.files("val")}
    assert used == {p.name for p in originals.rglob("*.jpeg")}
    assert len(used) == 180
    for name in ("person354_bacteria_1632.jpeg", "person1706_bacteria_4516.jpeg"):
        path = originals / "PNEUMONIA" / name
        with Image.open(path) as im:
            assert min(im.size) < cfg.data.crop_size  # what the old rule refused
        assert min(dm._decoders["root"](root / "train" / "PNEUMONIA" / name).shape) == 256
        assert dm.preprocessing.load(path).shape == (1, 224, 224)


def test_a_last_training_batch_of_one_image_is_not_made(tiny_root: Path, tmp_path: Path) -> None:
    # BatchNorm cannot train on a batch of one; evaluation keeps every image.
    dm = ChestXRayDataModule(tiny_root, cache_dir=tmp_path, resize_size=40, crop_size=32)
    dm.setup("fit")
    n = len(dm.files("train"))
    dm.batch_size = n - 1  # n images: one full batch and one of a single image
    sizes = [len(labels) for _, labels in dm.train_dataloader()]
    assert sizes == [n - 1]
    dm.batch_size = n - 2
    assert sorted(len(labels) for _, labels in dm.train_dataloader()) == [2, n - 2]
    assert sum(len(labels) for _, labels in dm.eval_dataloader("train")) == n


def test_a_file_name_that_is_not_utf8_trains_and_caches(tiny_copy: Path, tmp_path: Path) -> None:
    import os

    normal = tiny_copy / "train" / "NORMAL"
    first = sorted(normal.iterdir())[0]
    odd = normal / os.fsdecode(b"caf\xe9_IM-0115-0001.jpeg")
    first.rename(odd)
    dm = ChestXRayDataModule(tiny_copy, cache_dir=tmp_path, resize_size=40, crop_size=32)
    dm.setup("fit")
    assert odd in dm.files("train") + dm.files("val")
    split = "train" if odd in dm.files("train") else "val"
    images, _ = next(iter(dm.eval_dataloader(split)))
    assert images.shape[1:] == (3, 32, 32)
