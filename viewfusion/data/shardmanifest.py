"""A shard directory's manifest.json, read and checked; each shard verified before it is read.

    manifest = read_shard_manifest("data/shards")         # format, splits, image_size checked
    for entry in split_shards("data/shards", "train"):    # each shard's size checked (a stat)
        verify_shard(Path("data/shards") / entry["name"], entry)   # and its sha256, once

The writer is `viewfusion.data.shard` (`viewfusion data shard`), which owns the format's name,
version and file name; docs/FORMATS.md, "Shards", describes the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

from viewfusion.bounded import load_json
from viewfusion.data.shard import FORMAT, FORMAT_VERSION, MANIFEST
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import plain_name, sha256_file, sha256_json


def read_shard_manifest(shard_dir) -> dict:
    """The manifest of a shard directory, with a clear error when it is missing or foreign."""
    path = Path(shard_dir) / MANIFEST
    try:
        manifest = load_json(path)
    except FileNotFoundError:
        raise ViewFusionError(f"{path} missing: not a shard directory (run `viewfusion data shard`)") from None
    except ValueError as err:
        raise ViewFusionError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("format_version") != FORMAT_VERSION:
        raise ViewFusionError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    if not isinstance(manifest.get("splits"), dict) or not isinstance(manifest.get("image_size"), int):
        raise ViewFusionError(f"{path}: no splits or image_size; run `viewfusion data shard` again")
    for split, entry in manifest["splits"].items():
        _check_split(entry, f"{path}: splits.{split}")
    return manifest


def _check_split(entry, where: str) -> None:
    """Shard names are joined to the directory and object keys become sample file names, so
    both must be plain names; the fields the readers use must be there."""
    try:
        for index, shard in enumerate(entry["shards"]):
            plain_name(shard["name"], f"{where}.shards[{index}].name")
            shard["bytes"], shard["sha256"], shard["objects"]  # a KeyError if one is absent
        for key in entry["objects"]:
            plain_name(key, f"{where}.objects")
    except (KeyError, TypeError) as err:
        raise ViewFusionError(f"{where}: malformed ({type(err).__name__}: {err}); "
                              "run `viewfusion data shard` again") from None


def split_shards(shard_dir, split: str, *, manifest: dict | None = None) -> list[dict]:
    """The shard entries of `split`, each checked to exist with the recorded size (a cheap
    stat that catches truncated or half-copied shards before any training starts)."""
    manifest = read_shard_manifest(shard_dir) if manifest is None else manifest
    if split not in manifest["splits"]:
        raise ViewFusionError(f"{shard_dir}: no split {split!r} (have {', '.join(manifest['splits'])})")
    entries = manifest["splits"][split]["shards"]
    for entry in entries:
        check_size(Path(shard_dir) / entry["name"], entry)
    return entries


# Shard files whose sha256 this process has already checked: (path, size, mtime_ns, sha256).
# A training loop reopens every shard each epoch; hashing it again each time would double
# the I/O, while a rewritten file (new size or mtime) or another manifest is hashed anew.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def data_sha256(shard_dir, split: str) -> str:
    """Identity of a split's data (the samples' fingerprints record it): the sha256 of its
    shards' recorded sha256 values."""
    return sha256_json([entry["sha256"] for entry in split_shards(shard_dir, split)])


def check_size(path: Path, entry: dict) -> os.stat_result:
    """The shard's stat, after checking its size against the manifest entry."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    if stat is None or stat.st_size != entry["bytes"]:
        found = "missing" if stat is None else f"{stat.st_size} bytes"
        raise ViewFusionError(
            f"shard {path} is {found}, the manifest says {entry['bytes']}: truncated or modified; "
            "run `viewfusion data shard` again")
    return stat


def verify_shard(path, entry: dict) -> None:
    """Check a shard against its manifest entry before reading it: the size on every call, the
    sha256 the first time this process reads this version of the file (see `_VERIFIED`)."""
    path = Path(path)
    stat = check_size(path, entry)
    seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, entry["sha256"])
    if seen in _VERIFIED:
        return
    found = sha256_file(path)
    if found != entry["sha256"]:
        raise ViewFusionError(
            f"shard {path}: sha256 is {found}, the manifest says {entry['sha256']}: corrupted or "
            "modified; run `viewfusion data shard` again")
    _VERIFIED.add(seen)
