"""Which listed image files can be used: each decoded once (into the decoded-image cache, or
only to check it), then the bad-image policy (``data.on_bad_image``) applied.

A listed file that is not there to read (a link whose target is gone, a file removed since it
was listed) is a bad image like any other, named with the link and where it leads: it never
reaches the cache, whose key needs every file's size and time.

:func:`usable_images` is the one path every labelled listing takes: the data root's splits,
the holdout folder and any folder evaluated. It returns new listings and changes nothing given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from pneumonia.data.cache import DecodedImageCache
from pneumonia.data.images import BadImageError
from pneumonia.data.preprocessing import Preprocessing
from pneumonia.data.table import SplitListing
from pneumonia.errors import InputValueError
from pneumonia.system.pools import threads
from pneumonia.system.runtime import decode_threads

BadImagePolicy = Literal["error", "skip"]
BAD_IMAGE_POLICIES = ("error", "skip")


class BadImagesError(InputValueError):
    """One or more image files cannot be used; lists every one of them."""


@dataclass(frozen=True)
class UsableImages:
    """Listings without the files that cannot be used, and how to read the others."""

    listings: dict[str, SplitListing]
    decode: Callable[[Path], np.ndarray]  # path -> (H, W) uint8 at the preprocessing's size
    skipped: dict[str, str]  # resolved path -> why, under on_bad_image=skip
    hashes: dict[str, str] = field(default_factory=dict)  # resolved path -> content hash


def usable_images(
    listings: Mapping[str, SplitListing],
    preprocessing: Preprocessing,
    *,
    cache_dir: Path | None,
    policy: BadImagePolicy,
    warn: Callable[[str], None],
    where: Path,
) -> UsableImages:
    """Decode every listed file once and apply the bad-image policy.

    Args:
        cache_dir: decode into the decoded-image cache there (read from it afterwards); None
            decodes each file to check it and reads files again when they are used.
        where: the folder the listings come from, for the messages.

    Raises:
        BadImagesError: under ``error``, naming every unusable file and the way out.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise InputValueError(
            f"data.on_bad_image={policy!r}; valid: {', '.join(BAD_IMAGE_POLICIES)}"
        )
    files = [f for listing in listings.values() for f in listing.files]
    gone = {str(f.resolve()): why for f in files if (why := not_there(f))}
    there = [f for f in files if str(f.resolve()) not in gone] if gone else files
    if cache_dir is not None:
        cache = DecodedImageCache.open_or_build(
            there,
            decode=preprocessing.decode,
            settings=preprocessing.decode_settings(),
            cache_dir=cache_dir,
        )
        bad, decode, hashes = dict(cache.bad) | gone, cache.get, cache.hashes
    else:
        bad, decode = verify_images(there, preprocessing.decode) | gone, preprocessing.decode
        hashes = {}
    if not bad:
        return UsableImages(dict(listings), decode, {}, hashes)
    lines = "\n".join(f"  {path}: {reason}" for path, reason in sorted(bad.items()))
    if policy == "error":
        raise BadImagesError(
            f"{len(bad)} of {len(files)} image files under {where} cannot be used:\n{lines}\n"
            "Fix or remove them, or set data.on_bad_image=skip to go on without them."
        )
    warn(f"Skipping {len(bad)} unusable image files (data.on_bad_image=skip):\n{lines}")
    kept = {name: _without(listing, bad) for name, listing in listings.items()}
    return UsableImages(kept, decode, bad, hashes)


def not_there(path: Path) -> str | None:
    """Why ``path`` cannot be opened at all, in the project's words: a link whose target does
    not exist (named), or a file gone since it was listed; None where it is there."""
    if path.exists():
        return None
    if path.is_symlink():
        return (
            f"a broken link: {path} leads to {os.path.realpath(path)}, which does not exist "
            "(restore the target, or remove the link)"
        )
    return f"{path} no longer exists (removed since it was listed?)"


def _without(listing: SplitListing, bad: Mapping[str, str]) -> SplitListing:
    return listing.take([i for i, f in enumerate(listing.files) if str(f.resolve()) not in bad])


def verify_images(files: list[Path], decode: Callable[[Path], np.ndarray]) -> dict[str, str]:
    """Decode every file as it will be read (when there is no cache, which would do it):
    resolved path -> reason, for the files that fail."""

    def check(path: Path) -> str | None:
        try:
            decode(path)
        except BadImageError as e:
            return str(e)
        return None

    bad: dict[str, str] = {}
    with threads(decode_threads()) as pool:  # Ctrl-C drops the queued files
        results = tqdm(pool.map(check, files), total=len(files), desc="Checking images", unit="img")
        for path, reason in zip(files, results, strict=True):
            if reason is not None:
                bad[str(path.resolve())] = reason
    return bad
