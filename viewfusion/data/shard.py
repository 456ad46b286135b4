"""`viewfusion data shard`: deterministic webdataset tar shards per split, read straight from the zip.

    viewfusion data shard --zip data/synth/NMR_Dataset.zip --out data/shards --shards 4 --gpus 2
    viewfusion data shard --zip data/nmr/NMR_Dataset.zip --out data/shards-nocar --shards 64 \\
        --gpus 4 --withhold car
    viewfusion data shard --zip data/nmr/NMR_Dataset.zip --out data/shards-10 --shards 8 --percent 10

Layout (docs/FORMATS.md, "Shards"): `DIR/nmr-{split}-{i:04d}.tar`, one sample per object, key
`{synset}_{object_id}`, members `{key}.meta.json`, `{key}.0000.png` .. `{key}.0023.png` (the
zip's PNG bytes, unchanged) and `{key}.cameras.npz` (unchanged), and `DIR/manifest.json`.

`--shards K` is the number of shards of *each* split: the train split gets exactly K (so
`--gpus G` must divide K, and every rank streams K/G shards), val and test get min(K, objects).
Objects of a split are ordered by a hash of their key (so every shard mixes all categories) and
cut into K contiguous, balanced blocks (sizes differ by at most one). `--percent P` keeps, per
category and split, the first ceil(P% of n) objects in that hash order: deterministic, and a
smaller percentage is a subset of a larger one. `--withhold CATEGORY` drops the category from
train only (it stays in val and test) and is recorded in the manifest.

Tar headers are written here rather than by `tarfile`: fixed mtime 0, uid/gid 0, mode 0644, no
user names, members in a fixed order, so the same input gives byte-identical shards (and it
keeps sharding close to the speed of a plain copy). Everything is written into
`DIR.tmp-<host>-<pid>` and renamed to DIR only when every shard and the manifest are complete and
fsynced; a run first removes the `DIR.tmp-*`/`DIR.old-*` folders that killed runs of this host
left (their process is gone), never one of a live process.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Self

from viewfusion.bounded import load_json
from viewfusion.data import nmr
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import (
    abandoned,
    atomic_write_json,
    disk_errors,
    owner_tag,
)

FORMAT = "viewfusion-nmr-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_BLOCK = 512
_RECORD = 20 * _BLOCK  # pad archives like tar/tarfile do
_KEY = re.compile(r"^[0-9A-Za-z_-]+$")


def shard_name(split: str, index: int) -> str:
    return f"nmr-{split}-{index:04d}.tar"


def member_names(key: str) -> list[str]:
    """The members of one sample, in the order they are written."""
    return [f"{key}.meta.json"] + [f"{key}.{view:04d}.png" for view in range(nmr.NUM_VIEWS)] + [
        f"{key}.cameras.npz"]


def _tar_header(name: str, size: int) -> bytes:
    """A ustar header with every variable field fixed (mtime 0, uid/gid 0, no user names)."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ViewFusionError(f"tar member name longer than 100 bytes: {name}")
    header = bytearray(_BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class ShardWriter:
    """Writes one tar shard and hashes it on the way; use as a context manager so it is
    always closed (the official code never closed its writers and lost the last shard)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 -- closed by __exit__, the only way it is used
        self._sha = hashlib.sha256()
        self.bytes = 0
        self.objects = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self._finish()
        self._file.close()

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self.bytes += len(data)

    def add(self, key: str, members: list[bytes]) -> None:
        for name, data in zip(member_names(key), members, strict=True):
            self._write(_tar_header(name, len(data)))
            self._write(data)
            if len(data) % _BLOCK:
                self._write(b"\0" * (_BLOCK - len(data) % _BLOCK))
        self.objects += 1

    def _finish(self) -> None:
        self._write(b"\0" * (2 * _BLOCK))
        if self.bytes % _RECORD:
            self._write(b"\0" * (_RECORD - self.bytes % _RECORD))
        self._file.flush()
        os.fsync(self._file.fileno())

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def _hash_order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def select_objects(nmr_zip: nmr.NMRZip, *, lists: str = "viewfusion", percent: float = 100.0,
                   withhold: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Object keys of each split in hash order, after `percent` and `withhold` (synset ids)."""
    selected: dict[str, list[str]] = {}
    for split in nmr.SPLITS:
        keys = []
        for synset in nmr.SYNSETS:
            if split == "train" and synset in withhold:
                continue
            ids = sorted(nmr_zip.split_list(synset, split, lists=lists),
                         key=lambda object_id: _hash_order(nmr.object_key(synset, object_id)))
            keys += [nmr.object_key(synset, i) for i in ids[: math.ceil(len(ids) * percent / 100)]]
        for key in keys:
            if not _KEY.match(key):
                raise ViewFusionError(f"object {key}: id has characters a webdataset key cannot hold")
        selected[split] = sorted(keys, key=_hash_order)
    return selected


def _blocks(keys: list[str], count: int) -> list[list[str]]:
    n = len(keys)
    return [keys[i * n // count : (i + 1) * n // count] for i in range(count)]


def check_settings(*, shards: int, gpus: int, withhold=(), source: str = "config") -> None:
    """The rules a shard set's settings must follow together, owned here once: the workflow
    checks its config with them when it builds the DAG (before any job deletes an output), and
    `write_shards` checks its arguments. Pure, and this module imports no torch, so the
    Snakefile can call it at parse time. Errors name `source` (say `shard_sets.small`)."""
    for name, value in (("shards", shards), ("gpus", gpus)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ViewFusionError(f"{source}: {name} must be an integer >= 1, got {value!r}")
    if shards % gpus:
        raise ViewFusionError(
            f"{source}: shards {shards} is not divisible by gpus {gpus}: every GPU must stream the "
            f"same number of train shards; set shards to a multiple of {gpus} or change gpus")
    if isinstance(withhold, str):  # iterating it would withhold the letters
        raise ViewFusionError(f"{source}: withhold must be a list of categories, got the string {withhold!r}")
    synsets = {_withheld_synset(name, source) for name in withhold}
    if len(synsets) == len(nmr.SYNSETS):
        raise ViewFusionError(f"{source}: withhold names every category, so the train split would be "
                              "empty; withhold fewer")


def _withheld_synset(name, source: str) -> str:
    if not isinstance(name, str):  # YAML reads an unquoted synset id as a number
        raise ViewFusionError(f"{source}: withhold entry {name!r} is not a string; quote synset ids")
    try:
        return nmr.resolve_category(name)
    except ViewFusionError as err:
        raise ViewFusionError(f"{source}: withhold: {err}") from None


def _shard_counts(selected: dict[str, list[str]], *, shards: int) -> dict[str, int]:
    if len(selected["train"]) < shards:
        raise ViewFusionError(
            f"the train split has {len(selected['train'])} objects, fewer than --shards {shards}; "
            "use fewer shards (or a larger --percent)")
    return {split: shards if split == "train" else min(shards, len(keys))
            for split, keys in selected.items()}


def _write_split(nmr_zip: nmr.NMRZip, tmp: Path, split: str, keys: list[str], count: int,
                 progress) -> dict:
    shards = []
    for index, block in enumerate(_blocks(keys, count)):
        with ShardWriter(tmp / shard_name(split, index)) as writer:
            for key in block:
                synset, object_id = nmr.split_key(key)
                raw = nmr_zip.read_object(synset, object_id)
                meta = json.dumps({"synset": synset, "object_id": object_id,
                                   "category": nmr.SYNSETS[synset], "split": split}, sort_keys=True)
                writer.add(key, [meta.encode(), *raw.pngs, raw.cameras])
                progress.update(1)
        shards.append({"name": writer.path.name, "objects": writer.objects,
                       "sha256": writer.sha256, "bytes": writer.bytes})
    categories = {name: 0 for name in nmr.CATEGORIES}
    for key in keys:
        categories[nmr.SYNSETS[nmr.split_key(key)[0]]] += 1
    return {"shards": shards, "objects": keys, "categories": categories}


def _write_splits(nmr_zip: nmr.NMRZip, tmp: Path, selected: dict[str, list[str]],
                  counts: dict[str, int]) -> dict:
    from tqdm import tqdm

    with tqdm(total=sum(map(len, selected.values())), desc="shard", unit="obj", disable=None) as progress:
        return {split: _write_split(nmr_zip, tmp, split, keys, counts[split], progress)
                for split, keys in selected.items()}


def _manifest(zip_path: Path, splits: dict, settings: dict, withheld: tuple[str, ...]) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "num_views": nmr.NUM_VIEWS, **settings,
            "withheld": [nmr.SYNSETS[s] for s in withheld], "withheld_synsets": list(withheld),
            "members": {"meta": "meta.json", "image": "{view:04d}.png", "cameras": "cameras.npz"},
            "source": _source_record(zip_path), "splits": splits}


def _source_record(zip_path: Path) -> dict:
    source = {"zip": str(zip_path), "bytes": zip_path.stat().st_size}
    record = zip_path.with_name(zip_path.name + ".sha256.json")
    if record.exists():  # written by `viewfusion data download`; hashing 34 GB again is slow
        try:
            source["sha256"] = str(load_json(record)["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            raise ViewFusionError(f"{record}: unreadable checksum record ({err}); delete it and run "
                                  "`viewfusion data download` again to rewrite it") from None
    return source


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shards(zip_path, out, *, shards: int, gpus: int = 1, percent: float = 100.0,
                 withhold: tuple[str, ...] = (), lists: str = "viewfusion",
                 image_size: int = nmr.IMAGE_SIZE, force: bool = False) -> dict:
    """Shard an NMR zip into `out`; return throughput stats. Nothing appears at `out` unless
    every shard and the manifest were written (a failure leaves no directory behind)."""
    check_settings(shards=shards, gpus=gpus, withhold=withhold, source="command line")
    if not 0 < percent <= 100:  # also refuses NaN
        raise ViewFusionError(f"--percent must be in (0, 100], got {percent}")
    nmr.check_count(image_size, "--image-size", maximum=nmr.MAX_IMAGE_SIZE)
    withheld = tuple(dict.fromkeys(nmr.resolve_category(c) for c in withhold))
    zip_path, out = Path(zip_path), Path(out)
    if out.exists() and not force:
        raise ViewFusionError(f"{out} exists; remove it or pass --force to replace it")
    if out.exists() and not out.is_dir():  # --force replaces a shard directory, never a file
        raise ViewFusionError(f"{out}: is a file, expected a directory (--force replaces a shard directory only)")
    start = time.perf_counter()
    with nmr.NMRZip(zip_path, image_size=image_size) as nmr_zip:
        selected = select_objects(nmr_zip, lists=lists, percent=percent, withhold=withheld)
        counts = _shard_counts(selected, shards=shards)
        stale = remove_stale_scratch(out)
        tmp = scratch_path(out, "tmp")
        try:
            with disk_errors(out):  # a full disk is one line naming OUT, not a traceback
                shutil.rmtree(tmp, ignore_errors=True)  # a dead process that had our pid left it
                tmp.mkdir(parents=True)
                splits = _write_splits(nmr_zip, tmp, selected, counts)
                settings = {"image_size": image_size, "lists": lists, "percent": percent,
                            "shards_per_split": shards, "gpus": gpus}
                atomic_write_json(tmp / MANIFEST, _manifest(zip_path, splits, settings, withheld))
                _fsync_dir(tmp)
                _replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    total = sum(len(keys) for keys in selected.values())
    seconds = time.perf_counter() - start
    size = sum(s["bytes"] for split in splits.values() for s in split["shards"])
    return {"out": str(out), "stale_removed": [p.name for p in stale], "objects": total, "bytes": size,
            "seconds": round(seconds, 3), "objects_per_s": round(total / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 1)}


# `OUT.tmp-<host>-<pid>` (being written) and `OUT.old-<host>-<pid>` (the replaced OUT under
# --force); names without a host were written by an older version on this host.
_SCRATCH = re.compile(r"\.(?:tmp|old)-(?:(?P<host>.+)-)?(?P<pid>[0-9]+)")


def scratch_path(out: Path, kind: str) -> Path:
    """This process's scratch folder beside `out`. The host is in the name because on a shared
    filesystem a pid says nothing about a process of another machine."""
    return out.with_name(f"{out.name}.{kind}-{owner_tag()}")


def remove_stale_scratch(out: Path) -> list[Path]:
    """Remove the scratch folders beside `out` that a killed run left: those of this host whose
    process is gone. A live process's folder, or another host's, is never touched."""
    removed = []
    for path in sorted(out.parent.glob(glob.escape(out.name) + ".*-*")):
        match = _SCRATCH.fullmatch(path.name[len(out.name):])
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        if not abandoned(match["host"], int(match["pid"])):
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():  # --force: swap in the new directory, then drop the old one
        old = scratch_path(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    _fsync_dir(out.parent)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zip", required=True, help="NMR_Dataset.zip (real or synthetic)")
    parser.add_argument("--out", required=True, help="output directory (created atomically)")
    parser.add_argument("--shards", type=int, required=True,
                        help="shards per split (train exactly, val/test at most this many)")
    parser.add_argument("--gpus", type=int, default=1, help="training GPUs; must divide --shards")
    parser.add_argument("--percent", type=float, default=100.0, help="deterministic subset, per category")
    parser.add_argument("--withhold", nargs="+", default=[], metavar="CATEGORY",
                        help="categories (name or synset) removed from train only")
    parser.add_argument("--lists", choices=sorted(nmr.LIST_PREFIXES), default="viewfusion",
                        help="split lists: ViewFusion's train/val/test.lst or softras_*.lst")
    parser.add_argument("--image-size", type=int, default=nmr.IMAGE_SIZE, help="expected image size")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    stats = write_shards(args.zip, args.out, shards=args.shards, gpus=args.gpus, percent=args.percent,
                         withhold=tuple(args.withhold), lists=args.lists, image_size=args.image_size,
                         force=args.force)
    print(json.dumps(stats))
    return 0
