"""The decoded-image cache: the same pixels as decoding, read without decoding, never stale."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pneumonia.data.preprocessing as preprocessing_module
from pneumonia.data import BadImagesError, ChestXRayDataModule

from .test_datamodule import _break_some, make_dm


def _no_decoding(*args, **kwargs):
    raise AssertionError("decoded an image although the cache should have been used")


def _all_eval_tensors(dm: ChestXRayDataModule) -> torch.Tensor:
    loader = dm.eval_dataloader("train")
    return torch.cat([x for x, _ in loader])


def test_cache_gives_the_same_tensors_as_decoding(tiny_root: Path, tmp_path: Path) -> None:
    cached = make_dm(tiny_root, tmp_path, cache=True)
    cached.setup("fit")
    fresh = make_dm(tiny_root, tmp_path, cache=False)
    fresh.setup("fit")
    assert cached.files("train") == fresh.files("train")
    assert torch.equal(_all_eval_tensors(cached), _all_eval_tensors(fresh))


def test_second_setup_reads_the_cache_without_decoding(
    tiny_root: Path, tmp_path: Path, monkeypatch
) -> None:
    make_dm(tiny_root, tmp_path).setup("fit")
    monkeypatch.setattr(preprocessing_module, "load_resized", _no_decoding)
    dm = make_dm(tiny_root, tmp_path)
    dm.setup("fit")
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (3, 32, 32)


def test_changed_data_or_resolution_never_reads_a_stale_cache(
    tiny_copy: Path, tmp_path: Path
) -> None:
    make_dm(tiny_copy, tmp_path).setup("fit")
    caches = lambda: {p.name for p in (tmp_path / "cache").glob("[!.]*")}  # noqa: E731
    assert len(caches()) == 1
    make_dm(tiny_copy, tmp_path, resize_size=48).setup("fit")
    assert len(caches()) == 2

    target = sorted((tiny_copy / "train" / "NORMAL").glob("*.jpeg"))[0]
    white = np.full((60, 60), 255, np.uint8)
    Image.fromarray(white).save(target)
    os.utime(target, ns=(1, 1))  # even with an old mtime, the size differs
    dm = make_dm(tiny_copy, tmp_path, val_split="official")
    dm.setup("fit")
    assert len(caches()) == 3
    i = dm.files("train").index(target)
    image = dm.eval_dataloader("train").dataset[i][0]
    assert int(image.min()) >= 250  # the new white pixels, not the cached X-ray


def test_dataloader_with_workers_reopens_the_memmap(tiny_root: Path, tmp_path: Path) -> None:
    import pickle

    dm = make_dm(tiny_root, tmp_path, num_workers=2)
    dm.setup("fit")
    loader = dm.eval_dataloader("train")
    cache = loader.dataset.decode.__self__  # the cache's bound get
    cache.get(dm.files("train")[0])  # opens the memmap in this process
    assert cache._pixels is not None
    shipped = pickle.loads(pickle.dumps(cache))  # what a worker process receives
    assert shipped._pixels is None  # no memmap (nor its pixels) in the pickle: reopened there
    with_workers = torch.cat([x for x, _ in loader])
    dm.num_workers = 0
    in_process = torch.cat([x for x, _ in dm.eval_dataloader("train")])
    assert len(with_workers) == len(dm.files("train"))
    assert torch.equal(with_workers, in_process)  # the same pixels from the reopened memmap


def test_bad_images_do_not_lose_the_cache(tiny_copy: Path, tmp_path: Path, monkeypatch) -> None:
    _break_some(tiny_copy)
    with pytest.raises(BadImagesError):
        make_dm(tiny_copy, tmp_path).setup("fit")
    monkeypatch.setattr(preprocessing_module, "load_resized", _no_decoding)
    with pytest.warns(UserWarning, match="Skipping 3"):
        make_dm(tiny_copy, tmp_path, on_bad_image="skip").setup("fit")


def test_another_interpolation_gets_its_own_cache(tiny_root: Path, tmp_path: Path) -> None:
    bicubic = make_dm(tiny_root, tmp_path)
    bicubic.setup("fit")
    nearest = make_dm(tiny_root, tmp_path, interpolation="nearest")
    nearest.setup("fit")
    assert len(list((tmp_path / "cache").glob("[!.]*"))) == 2  # .locks/ aside
    assert not torch.equal(_all_eval_tensors(bicubic), _all_eval_tensors(nearest))


def test_the_default_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumonia.data.cache import default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PNEUMONIA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pneumonia"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pneumonia"
    monkeypatch.setenv("PNEUMONIA_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"  # wins over both


@pytest.mark.parametrize("damage", ["meta.json", "pixels.u8"])
def test_a_damaged_cache_is_rebuilt_not_read(tiny_root: Path, tmp_path: Path, damage: str):
    """A cache cut short after it was built (a full disk, a copy that stopped) is rebuilt."""
    make_dm(tiny_root, tmp_path).setup("fit")
    (folder,) = (tmp_path / "cache").glob("[!.]*")
    target = folder / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    dm = make_dm(tiny_root, tmp_path)
    dm.setup("fit")
    fresh = make_dm(tiny_root, tmp_path, cache=False)
    fresh.setup("fit")
    assert torch.equal(_all_eval_tensors(dm), _all_eval_tensors(fresh))


def _cache_contents(directory: Path) -> tuple:
    from pneumonia.data.cache import DecodedImageCache

    cache = DecodedImageCache(directory)
    pixels = (directory / "pixels.u8").read_bytes()
    return cache.files, cache.bad, cache.hashes, np.load(directory / "index.npy").tolist(), pixels


def test_an_interrupted_build_resumes_without_decoding_finished_images(
    tiny_copy: Path, tmp_path: Path, monkeypatch
) -> None:
    import pneumonia.data.cache_build as cache_module
    from pneumonia.data.cache import DecodedImageCache
    from pneumonia.data.preprocessing import Preprocessing

    monkeypatch.setattr(cache_module, "BUILD_CHUNK", 4)
    _break_some(tiny_copy)  # bad images are part of what resumes
    files = sorted(tiny_copy.rglob("*.jpeg"))
    prep = Preprocessing(resize_size=40, crop_size=32)
    calls: list[Path] = []

    def stops_after_ten(path: Path) -> np.ndarray:  # a closure: decoded in threads
        if len(calls) == 10:
            raise KeyboardInterrupt
        calls.append(path)
        return prep.decode(path)

    build = dict(settings=prep.decode_settings(), cache_dir=tmp_path / "a", num_threads=1)
    with pytest.raises(KeyboardInterrupt):
        DecodedImageCache.open_or_build(files, decode=stops_after_ten, **build)
    assert not list((tmp_path / "a").glob("[!.]*"))  # no cache a reader could take as whole

    calls.clear()
    resumed = DecodedImageCache.open_or_build(files, decode=lambda p: calls.append(p) or
                                              prep.decode(p), **build)  # fmt: skip
    assert len(calls) == len(files) - 8  # two whole chunks of 4 were kept
    whole = DecodedImageCache.open_or_build(
        files, decode=prep.decode, settings=prep.decode_settings(), cache_dir=tmp_path / "b"
    )
    assert _cache_contents(resumed.directory) == _cache_contents(whole.directory)
    assert len(resumed.bad) == 3


def test_a_second_setup_takes_the_leak_checks_hashes_from_the_cache(
    tiny_copy: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    import pneumonia.data.leakage as leakage_module

    source = sorted((tiny_copy / "train" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copy(source, tiny_copy / "test" / "NORMAL" / "copy_of_a_training_image.jpeg")
    first = make_dm(tiny_copy, tmp_path)
    with pytest.warns(UserWarning, match="identical image"):
        first.setup()

    def no_hashing(path):
        raise AssertionError(f"hashed {path} again although the cache knows it")

    monkeypatch.setattr(leakage_module, "content_hash", no_hashing)
    second = make_dm(tiny_copy, tmp_path)
    with pytest.warns(UserWarning, match="identical image"):
        second.setup()
    assert second.leakage == first.leakage
    assert any(leak["identical_images"] for leak in second.leakage)


def test_worker_processes_build_the_same_cache_as_one_thread(
    tiny_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import types

    import pneumonia.data.cache_build as cache_module
    import pneumonia.system.pools as pools
    from pneumonia.data.cache import DecodedImageCache
    from pneumonia.data.preprocessing import Preprocessing

    started = []
    fork = pools.mp.get_context("fork")

    def counted_pool(processes: int, **kwargs):
        started.append(processes)
        return fork.Pool(processes, **kwargs)

    context = types.SimpleNamespace(Pool=counted_pool)
    monkeypatch.setattr(pools, "mp", types.SimpleNamespace(get_context=lambda method: context))
    monkeypatch.setattr(cache_module, "PROCESS_MIN_IMAGES", 0)  # processes even for a few
    files = sorted(tiny_root.rglob("*.jpeg"))
    prep = Preprocessing(resize_size=40, crop_size=32)
    build = dict(decode=prep.decode, settings=prep.decode_settings())
    two = DecodedImageCache.open_or_build(
        files, **build, cache_dir=tmp_path / "processes", num_threads=2
    )
    assert started == [2]  # the Preprocessing's decode went to two worker processes
    one = DecodedImageCache.open_or_build(
        files, **build, cache_dir=tmp_path / "thread", num_threads=1
    )
    assert started == [2]
    assert _cache_contents(two.directory) == _cache_contents(one.directory)


def test_a_build_stopped_before_its_last_rename_is_taken_as_it_is(
    tiny_root: Path, tmp_path: Path
) -> None:
    from pneumonia.data.cache import DecodedImageCache
    from pneumonia.data.preprocessing import Preprocessing

    files = sorted(tiny_root.rglob("*.jpeg"))
    prep = Preprocessing(resize_size=40, crop_size=32)
    build = dict(settings=prep.decode_settings(), cache_dir=tmp_path)
    built = DecodedImageCache.open_or_build(files, decode=prep.decode, **build)
    before = _cache_contents(built.directory)
    built.directory.rename(tmp_path / f".partial-{built.directory.name}")  # stopped just there
    again = DecodedImageCache.open_or_build(files, decode=_no_decoding, **build)
    assert _cache_contents(again.directory) == before
