"""Sample directories on disk: the one owner of their layout, packed writes and verified reads.

    DIR/chunks/{i}-of-{n}.tar      chunk i of n: `{item}.png` generated images (8-bit RGB, PNG text
                                   `viewfusion:made-by`) and, when sampled with --save-weights,
                                   `{item}.npz` view weights; written just before the marker
    DIR/chunks/{i}-of-{n}.json     the chunk's marker (viewfusion.evaluate.sample): the chunk is complete
    DIR/pending/{i}-of-{n}/        one file per item of a chunk still running (a killed run keeps
                                   them); packed into the chunk's tar, then swept (evaluate.pending)
    M.gt.tar                       ground truth of the manifest M.json, `{item}.png`: once per
                                   manifest, not once per sample directory (viewfusion ground-truth)

Why packs: the paper's protocol makes ~1.7 M images; a file per image, with ground truth copied
into every sample directory, is over common inode quotas (README, "Cluster"). A pack is a plain
tar (`tar tf` lists it), addressed by member name and read into memory, never extracted;
`viewfusion export` writes PNG files on demand. Every read checks the member's `made_by`
(viewfusion.evaluate.provenance) against the chunk marker or the ground truth's data, so bytes made by other
settings are never returned under this label.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from viewfusion.bounded import load_json, load_npz
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import provenance
from viewfusion.fsutil import (
    atomic_path,
    atomic_write_bytes,
    plain_name,
    remove_stale_temps,
)
from viewfusion.model import samplers

IMAGE, WEIGHTS = ".png", ".npz"  # member suffixes: a generated image, its view weights
PACK = ".tar"
CHUNK_MARKER = re.compile(r"^\d+-of-\d+\.json$")  # chunks/ also holds packs and progress records
FILES_PER_CHUNK = 3  # a finished chunk leaves its marker, its pack and its progress record (viewfusion plan)
GT_SUFFIX = ".gt.tar"
# Chunks a sample directory may be cut into (evaluation.chunks, --chunk i/N): the paper's protocol
# has ~1.7 M targets in all, run as a few hundred chunks; N is a number of files and jobs.
MAX_CHUNKS = 100_000
# The largest array of a weights member: `final` holds (views, H, W) float16, 48 MB at 23 views of
# 1024 px (viewfusion.limits.MAX_IMAGE_SIZE); a member inflating to more is refused.
MAX_WEIGHTS_ARRAY_BYTES = 64 << 20
# Settings every chunk of one sample directory shares: one experiment, checkpoint and sampler.
# What a marker repeats of its fingerprinted settings (metrics rows carry them).
MARKER_SETTINGS = ("sampler", "steps", "eta", "weights_sha256", "config_sha256", "data_sha256")
CHUNK_SETTINGS = ("fingerprint", "sampler", "steps", "eta", "checkpoint_step", "weights_sha256", "config_sha256",
                  "experiment")


def chunk_stem(i: int, n: int) -> str:
    return f"{i}-of-{n}"


def marker_path(root, stem: str) -> Path:
    return Path(root) / "chunks" / f"{stem}.json"


def pack_path(root, stem: str) -> Path:
    return Path(root) / "chunks" / f"{stem}{PACK}"


def pending_dir(root, stem: str) -> Path:
    return Path(root) / "pending" / stem


def ground_truth_path(manifest) -> Path:
    """`results/manifests/all/test-v3.json` -> `results/manifests/all/test-v3.gt.tar`."""
    path = Path(manifest)
    return path.with_name(path.name.removesuffix(".json") + GT_SUFFIX)


def tag_of(name: str, data: bytes) -> str | None:
    """The `made_by` a member carries: PNG text of an image, key `made_by` of a weights file."""
    if name.endswith(IMAGE):
        return provenance.png_made_by(io.BytesIO(data))
    try:
        arrays = load_npz(data, name, max_array_bytes=MAX_WEIGHTS_ARRAY_BYTES)
    except ViewFusionError:
        return None
    return str(arrays["made_by"]) if "made_by" in arrays else None


# ---------------------------------------------------------------- packs


class Pack:
    """The members of one tar by name, read into memory on demand (never extracted)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._tar = tarfile.open(self.path, "r:")  # noqa: SIM115 -- closed by close(); uncompressed, so seekable
            members = self._tar.getmembers()
        except (OSError, tarfile.TarError) as err:
            raise ViewFusionError(f"{self.path}: not a readable pack ({err}); rerun the step that wrote it") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            if not member.isfile():
                continue
            if member.issparse():  # its holes would be read as zeros: a small pack, gigabytes in memory
                raise ViewFusionError(f"{self.path}: member {member.name} is a sparse file, which no pack "
                                      "holds; rerun the step that wrote it")
            if member.name in self.members:  # which of the two would be scored is undefined
                raise ViewFusionError(f"{self.path}: member {member.name} appears twice; rerun the step that wrote it")
            self.members[member.name] = member

    def read(self, name: str) -> bytes | None:
        member = self.members.get(name)
        if member is None:
            return None
        try:
            return self._tar.extractfile(member).read()
        except (OSError, tarfile.TarError) as err:
            raise ViewFusionError(f"{self.path}: member {name} unreadable ({err}); "
                                  "rerun the step that wrote it") from None

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_pack(path, members: Iterable[tuple[str, bytes]]) -> None:
    """A tar of (name, bytes) in the given order, every header field fixed (mtime 0, uid/gid 0,
    mode 0644), so equal members give equal bytes; written atomically."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(plain_name(name, f"member of {path}"))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- writing a chunk


class ChunkStore:
    """Where one run of chunk `stem` finds the items already made and puts new ones.

    Finished items are looked up in this chunk's pending folder and pack, then in those of other
    chunkings of the directory (a change of evaluation.chunks reuses every image); a file counts
    only when it carries the wanted `made_by`."""

    def __init__(self, root, stem: str):
        self.root, self.stem = Path(root), stem
        self._n = stem.split("-of-")[1]
        for folder in (self.root / "chunks", pending_dir(root, stem)):
            remove_stale_temps(folder)  # half-written files of a killed run
        self._folders = [pending_dir(root, stem)] + sorted(
            p for p in (self.root / "pending").glob("*-of-*") if not p.name.endswith(f"-of-{self._n}"))
        self._pack_paths = self._list_packs()
        self._packs: dict[Path, Pack | None] = {}
        self._found: dict[str, tuple[str, bytes]] = {}  # name -> (tag, bytes): finish() reuses them

    def _list_packs(self) -> list[Path]:
        others = (p for p in (self.root / "chunks").glob(f"*{PACK}") if not p.stem.endswith(f"-of-{self._n}"))
        return [pack_path(self.root, self.stem), *sorted(others)]

    def _pack(self, path: Path) -> Pack | None:
        if path not in self._packs:
            try:
                self._packs[path] = Pack(path) if path.is_file() else None
            except ViewFusionError:
                self._packs[path] = None  # a damaged pack is regenerated, not trusted
        return self._packs[path]

    def find(self, name: str, tag: str) -> bytes | None:
        """The bytes of member `name` carrying `tag`, from the first source that has them."""
        if name in self._found and self._found[name][0] == tag:
            return self._found[name][1]
        data = self._search(name, tag)
        if data is not None:
            self._found[name] = (tag, data)
        return data

    def _search(self, name: str, tag: str) -> bytes | None:
        for folder in self._folders:
            data = _read_if_there(folder / name)
            if data is not None and tag_of(name, data) == tag:
                return data
        for path in self._pack_paths:
            pack = self._pack(path)
            data = pack.read(name) if pack is not None and name in pack.members else None
            if data is not None and tag_of(name, data) == tag:
                return data
        return None

    def exists(self, name: str) -> bool:
        """Whether any source holds member `name`, whatever made it."""
        return any((f / name).is_file() for f in self._folders) or any(
            (p := self._pack(path)) is not None and name in p.members for path in self._pack_paths)

    def put(self, name: str, data: bytes) -> None:
        self._found.pop(name, None)  # what find() saw of this name is replaced
        path = pending_dir(self.root, self.stem) / name
        try:
            atomic_write_bytes(path, data)
        except FileNotFoundError:  # a concurrent sweep removed the folder, empty, as it was made
            atomic_write_bytes(path, data)

    def finish(self, wanted: list[tuple[str, str]]) -> Path:
        """Pack the members `wanted` ((name, tag) in order) into the chunk's tar. Every member
        must be found with its tag. The pending files stay until the chunk is marked complete
        (then the caller runs clean_pending)."""
        self._close_packs()  # a concurrent run may have packed (and swept) items since they were opened
        self._pack_paths = self._list_packs()
        members = []
        for name, tag in wanted:
            data = self.find(name, tag)
            if data is None:
                raise ViewFusionError(f"{self.root}: {name} of chunk {self.stem} vanished before packing; "
                                      f"rerun `viewfusion sample` for chunk {self.stem}")
            members.append((name, data))
        self.close()
        path = pack_path(self.root, self.stem)
        write_pack(path, members)
        return path

    def _close_packs(self) -> None:
        for pack in self._packs.values():
            if pack is not None:
                pack.close()
        self._packs.clear()

    def close(self) -> None:
        self._close_packs()
        self._found.clear()


def _read_if_there(path: Path) -> bytes | None:
    """The bytes of a pending file; None when it is not there (or was swept as it was read)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None


# ---------------------------------------------------------------- reading a finished directory


def read_chunks(generated) -> dict[str, dict]:
    """Each chunk marker of a sample directory, keyed by its stem ("2-of-4"); refuses markers
    without a fingerprint and chunks that disagree on their settings."""
    generated, chunks = Path(generated), {}
    if generated.exists() and not generated.is_dir():
        raise ViewFusionError(f"{generated}: is a file, expected a sample directory (`viewfusion sample --out`)")
    for path in sorted(p for p in (generated / "chunks").glob("*.json") if CHUNK_MARKER.match(p.name)):
        try:
            chunks[path.stem] = load_json(path, f"chunk marker {path}")
        except (OSError, ValueError) as err:
            raise ViewFusionError(f"chunk marker {path}: unreadable ({err})") from None
        if not isinstance(chunks[path.stem], dict) or "fingerprint" not in chunks[path.stem]:
            raise ViewFusionError(f"chunk marker {path} records no fingerprint (written by an older viewfusion "
                                  "or by hand); rerun `viewfusion sample` for it")
        check_marker_settings(path, chunks[path.stem])
    if not chunks:
        raise ViewFusionError(
            f"{generated}/chunks/ has no chunk markers: no chunk of `viewfusion sample` has finished there")
    for name in CHUNK_SETTINGS:
        values = {json.dumps(c.get(name)) for c in chunks.values()}
        if len(values) > 1:
            raise ViewFusionError(f"{generated}: chunks disagree on {name} ({', '.join(sorted(values))}); "
                                  "one sample directory holds one experiment, checkpoint and sampler")
    return chunks


def check_marker_settings(path, marker: dict) -> None:
    """A marker's sampler, steps, eta, spacing and sha256s label metrics rows: they must be the
    settings its fingerprint hashes (which its images carry), so an edited marker relabels nothing."""
    settings, redo = marker.get("settings"), f"rerun `viewfusion sample` for chunk {Path(path).stem}"
    if not isinstance(settings, dict) or provenance.fingerprint(settings) != marker["fingerprint"]:
        raise ViewFusionError(f"chunk marker {path}: its settings do not hash to its fingerprint "
                              f"(edited by hand?); {redo}")
    for name in MARKER_SETTINGS:
        if name in settings and marker.get(name) != settings[name]:
            raise ViewFusionError(f"chunk marker {path}: {name} {marker.get(name)!r} is not the fingerprinted "
                                  f"{settings[name]!r} (edited by hand?); {redo}")
    try:
        spacing = samplers.chosen_spacing(str(settings.get("sampler")), marker.get("spacing"))
    except ValueError:
        spacing = marker.get("spacing")
    if spacing != settings.get("spacing"):
        raise ViewFusionError(f"chunk marker {path}: spacing {marker.get('spacing')!r} is not the fingerprinted "
                              f"{settings.get('spacing')!r} (edited by hand?); {redo}")


class FinishedSamples:
    """The completed chunks of a sample directory, with verified reads of each item's files."""

    def __init__(self, generated, chunks: dict[str, dict] | None = None):
        self.root = Path(generated)
        self.chunks = read_chunks(self.root) if chunks is None else chunks
        self.owner = {name: stem for stem, c in self.chunks.items() for name in c.get("items", [])}
        self._packs: dict[str, Pack] = {}

    def ground_truth(self, path) -> GroundTruth:
        """The ground-truth pack at `path`, checked against the data these samples were made of."""
        return GroundTruth(path, next(iter(self.chunks.values())).get("data_sha256"))

    def read(self, it: dict, suffix: str = IMAGE) -> bytes:
        """The bytes of item `it` (a manifest entry), refused unless its `made_by` is its chunk's."""
        name, stem = it["item"], self.owner.get(it["item"])
        if stem is None:
            raise ViewFusionError(f"item {name} is in no completed chunk of {self.root}")
        if stem not in self._packs:
            path = pack_path(self.root, stem)
            if not path.is_file():
                raise ViewFusionError(f"{path} is missing although chunk {stem} is marked complete; rerun "
                                      f"`viewfusion sample` for chunk {stem}")
            self._packs[stem] = Pack(path)
        data = self._packs[stem].read(name + suffix)
        where = f"{pack_path(self.root, stem)}: {name}{suffix}"
        if data is None:
            raise ViewFusionError(f"{where} is missing although chunk {stem} is marked complete; rerun "
                                  f"`viewfusion sample` for chunk {stem}")
        found = tag_of(name + suffix, data)
        if found != provenance.made_by(self.chunks[stem]["fingerprint"], it):
            what = "carries no fingerprint" if found is None else "was made by other settings or manifest entry"
            raise ViewFusionError(f"{where} {what} than chunk {stem} records; rerun `viewfusion sample` "
                                  f"for chunk {stem}: it regenerates such items")
        return data

    def close(self) -> None:
        for pack in self._packs.values():
            pack.close()
        self._packs.clear()


class GroundTruth:
    """The ground-truth pack of a manifest, each image checked against the data it must come from."""

    def __init__(self, path, data_sha256: str):
        self.path = Path(path)
        if self.path.is_dir():
            raise ViewFusionError(f"ground truth {self.path}: is a directory, expected the pack file")
        if not self.path.is_file():
            raise ViewFusionError(f"ground truth {self.path} is missing; write it with `viewfusion ground-truth "
                                  f"--manifest MANIFEST --shards DIR`")
        self.pack = Pack(self.path)
        self.fingerprint = provenance.fingerprint(provenance.ground_truth_settings(data_sha256))

    def read(self, it: dict) -> bytes:
        name = it["item"] + IMAGE
        data = self.pack.read(name)
        if data is None:
            raise ViewFusionError(f"{self.path} has no {name}: it was written for another manifest; rerun "
                                  "`viewfusion ground-truth` for this one")
        if tag_of(name, data) != provenance.made_by(self.fingerprint, it):
            raise ViewFusionError(f"{self.path}: {name} was made from other data or another manifest entry than "
                                  "the samples; rerun `viewfusion ground-truth` for this manifest and shards")
        return data

    def close(self) -> None:
        self.pack.close()
