"""Streaming loaders over the shards of `viewfusion data shard` (webdataset 1.x).

    from viewfusion.data.loader import train_loader, eval_objects, load_objects
    loader = train_loader("data/shards", batch_size=28, rank=rank, world_size=4, num_workers=2,
                          seed=0, steps_per_epoch=1000)
    for batch in loader:          # exactly steps_per_epoch batches per epoch, on every rank
        batch["y_0"], batch["y_cond"], batch["view_count"], batch["angle"]
    for record in eval_objects("data/shards", "test", rank=rank, world_size=4):
        record.images             # (24, 3, H, W) float32 in [0, 1]

Training: the split's shard list goes through an explicit `split_by_node` (rank r of W takes
shards r, r+W, ...; W must divide the shard count) and `split_by_worker`, then each worker reads
shards forever (drawn with replacement, or a seeded permutation per pass: `shard_order`),
shuffles samples in a buffer of `shuffle_buffer` and builds whole batches;
`with_epoch(steps_per_epoch)` cuts every rank's stream to the same number of steps. All
randomness comes from `numpy.random.default_rng([seed, rank, worker, epoch, stage])`.

View selection (the paper's, `select_views`): a random permutation of the 24 views; the first
is the target, the next `view_count` (uniform in 1..max_views per sample) condition it. With
probability `shuffle_prob` (0.1) the conditioning views are drawn afresh from all 24, so the
target may be among them. `self_view_prob` (0 in the paper) then puts the target itself among
them, so a small model learns to carry the views' appearance over early. `relative=True` adds the
reference view (the first conditioning view) and makes the angle target minus reference,
computed after that reshuffle (the official code took the reference before it, so those samples
got a wrong angle).

Integrity: every reader checks a shard against `manifest.json` before reading it
(`viewfusion.data.shard.verify_shard`): its size on every open, its sha256 the first time this
process reads the file (a training loop reopening shards each epoch hashes each one once).

Evaluation never resamples: `eval_objects` yields every object of the split exactly once, in
manifest order; rank r of W takes the r-th of W contiguous, balanced blocks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viewfusion.data import nmr
from viewfusion.data.shard import read_shard_manifest, split_shards, verify_shard
from viewfusion.errors import ViewFusionError

_PNGS = tuple(f"{view:04d}.png" for view in range(nmr.NUM_VIEWS))
_ZERO_BLOCK = bytes(512)


@dataclass(frozen=True)
class ObjectRecord:
    """One object from the shards. PNG bytes are kept; `images` decodes them on first use."""

    key: str
    synset: str
    object_id: str
    pngs: tuple[bytes, ...]
    cameras_npz: bytes
    image_size: int = nmr.IMAGE_SIZE

    def image(self, view: int) -> torch.Tensor:
        """View `view` as (3, H, W) float32 in [0, 1]."""
        out = np.empty((self.image_size, self.image_size, 3), np.uint8)
        decode_into(out, self.pngs[view], where=f"{self.key} view {view}")
        return _to_float(out)

    @cached_property
    def images(self) -> torch.Tensor:
        """All 24 views, (24, 3, H, W) float32 in [0, 1]."""
        out = np.empty((nmr.NUM_VIEWS, self.image_size, self.image_size, 3), np.uint8)
        for view, png in enumerate(self.pngs):
            decode_into(out[view], png, where=f"{self.key} view {view}")
        return _to_float(out)

    @cached_property
    def cameras(self) -> dict[str, np.ndarray]:
        return nmr.load_cameras(self.cameras_npz, member=f"{self.key}.cameras.npz")


def decode_into(out: np.ndarray, png: bytes, *, where: str) -> None:
    """Decode a PNG into the preallocated (H, W, 3) uint8 array `out`."""
    try:
        with Image.open(io.BytesIO(png)) as im:
            if im.size != (out.shape[1], out.shape[0]):
                raise ViewFusionError(f"{where}: image is {im.size[0]}x{im.size[1]}, expected "
                                      f"{out.shape[1]}x{out.shape[0]}")
            out[...] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ViewFusionError(f"{where}: unreadable PNG ({err})") from None


def _to_float(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1], converted once.

    numpy does it in one pass; torch's strided copy is ~10x slower when its intra-op threads
    compete for the cores (the main process of a num_workers=0 loader)."""
    axes = (*range(images.ndim - 3), images.ndim - 1, images.ndim - 3, images.ndim - 2)
    out = np.ascontiguousarray(images.transpose(axes), dtype=np.float32)
    return torch.from_numpy(np.divide(out, 255.0, out=out))


def select_views(rng: np.random.Generator, *, max_views: int = 6, shuffle_prob: float = 0.1,
                 self_view_prob: float = 0.0) -> tuple[int, np.ndarray]:
    """(target view, conditioning views) for one training sample, as the paper draws them; with
    probability `self_view_prob` (not in the paper) the target then replaces a random one of its
    conditioning views, unless it is already among them."""
    if not 1 <= max_views < nmr.NUM_VIEWS:
        raise ViewFusionError(f"max_views must be in 1..{nmr.NUM_VIEWS - 1}, got {max_views}")
    order = rng.permutation(nmr.NUM_VIEWS)
    view_count = int(rng.integers(1, max_views + 1))
    cond = order[1 : 1 + view_count]
    if rng.random() < shuffle_prob:
        cond = rng.permutation(nmr.NUM_VIEWS)[:view_count]  # the target may now condition itself
    # No draw at 0: the paper's selection keeps its random stream.
    if self_view_prob > 0 and rng.random() < self_view_prob and order[0] not in cond:
        cond = cond.copy()
        cond[rng.integers(view_count)] = order[0]
    return int(order[0]), cond


def relative_angle(target: int, reference: int) -> float:
    """Azimuth of the target relative to the reference view, in [0, 2*pi)."""
    return nmr.view_angle((target - reference) % nmr.NUM_VIEWS)


# ------------------------------------------------------------------------------- reading tars


def iter_tar(path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a shard written by `viewfusion data shard`, in file order.

    A minimal ustar reader: `tarfile` spends ~60 us parsing each header, which alone would cap
    a worker near 600 samples/s (26 members each); this one checks the header checksum and
    reports truncation with the shard's name."""
    with open(path, "rb", buffering=1 << 20) as fh:
        while True:
            header = fh.read(512)
            if len(header) < 512:
                raise ViewFusionError(f"shard {path} is truncated (no end-of-archive marker); "
                                      "run `viewfusion data shard` again")
            if header == _ZERO_BLOCK:
                return
            if sum(header) - sum(header[148:156]) + 256 != int(header[148:154] or b"0", 8):
                raise ViewFusionError(f"shard {path}: corrupt tar header at byte {fh.tell() - 512}")
            name = header[:100].split(b"\0", 1)[0].decode()
            size = int(header[124:135] or b"0", 8)
            data = fh.read(size)
            if len(data) < size:
                raise ViewFusionError(f"shard {path} is truncated inside {name}; run `viewfusion data shard` again")
            fh.seek(-size % 512, 1)
            if header[156:157] in (b"0", b"\0"):
                yield name, data


def _group(members: Iterator[tuple[str, bytes]], url: str) -> Iterator[dict]:
    """Consecutive members with the same key -> one webdataset-style sample dict."""
    sample: dict = {}
    for name, data in members:
        key, _, suffix = name.partition(".")
        if key != sample.get("__key__"):
            if sample:
                yield sample
            sample = {"__key__": key, "__url__": url}
        sample[suffix] = data
    if sample:
        yield sample


def tar_samples(shards):
    """Pipeline stage: {"url": path, "bytes", "sha256"} items (a manifest entry) -> samples,
    each shard verified against its entry before it is read (replaces `wds.tarfile_to_samples`)."""
    for shard in shards:
        verify_shard(shard["url"], shard)
        yield from _group(iter_tar(shard["url"]), shard["url"])


# ------------------------------------------------------------------------------------ training


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def split_by_node(shards, *, rank: int, world_size: int):
    """Rank `rank` of `world_size` takes every world_size-th shard, starting at its rank."""
    urls = list(shards)
    if len(urls) % world_size:
        raise ViewFusionError(f"{len(urls)} shards cannot be split evenly over {world_size} ranks; "
                              f"re-shard with --shards a multiple of {world_size}")
    yield from urls[rank::world_size]


def split_by_worker(shards):
    """Each DataLoader worker takes every num_workers-th of its rank's shards; with fewer shards
    than workers, all workers share them (they still draw differently: seeds differ)."""
    urls = list(shards)
    worker, num_workers = _worker()
    yield from urls[worker::num_workers] if len(urls) >= num_workers else urls


class _Seeded:
    """A pipeline stage whose random generator is new each time the pipeline is iterated:
    seeded by (seed, rank, worker, epoch, stage), so epochs and workers never repeat draws."""

    stage = 0

    def __init__(self, *, seed: int, rank: int):
        self.seed, self.rank, self.epoch = seed, rank, -1

    def _rng(self) -> np.random.Generator:
        self.epoch += 1
        return np.random.default_rng([self.seed, self.rank, _worker()[0], self.epoch, self.stage])


class _Resample(_Seeded):
    """Infinite stream of this worker's shards drawn with replacement (webdataset's resampling,
    placed after the explicit node and worker split)."""

    stage = 1

    def __call__(self, shards):
        shards, rng = list(shards), self._rng()
        while True:
            # A fresh dict each time: the tar reader stores the open stream in it.
            yield dict(shards[int(rng.integers(len(shards)))])


class _EpochShards(_Seeded):
    """Infinite stream of this worker's shards, each pass a seeded permutation of all of them:
    every shard is read once per pass, so no shard's objects go missing for several passes
    as they can when shards are drawn with replacement from a handful of them."""

    stage = 1

    def __call__(self, shards):
        shards, rng = list(shards), self._rng()
        while True:
            for index in rng.permutation(len(shards)):
                yield dict(shards[int(index)])


SHARD_ORDERS = {"resample": _Resample, "epoch": _EpochShards}


class _Batches(_Seeded):
    """Shuffle buffer, view selection and batch decoding into preallocated uint8 arrays."""

    stage = 2

    def __init__(self, *, seed, rank, batch_size, max_views, shuffle_prob, self_view_prob, relative,
                 image_size, buffer, skip=0):
        super().__init__(seed=seed, rank=rank)
        self.batch_size, self.max_views, self.shuffle_prob = batch_size, max_views, shuffle_prob
        self.self_view_prob = self_view_prob
        self.relative, self.image_size, self.buffer = relative, image_size, buffer
        self.skip = skip  # batches of this worker to draw but not decode (a mid-segment resume)

    def __call__(self, samples):
        rng, pool, batch = self._rng(), [], []
        # The loader takes batches from its workers in turn, starting at worker 0: each skips
        # whole rounds here, and `_Drop` drops the rest of the skip in the main process.
        skip = self.skip // _worker()[1] if self.epoch == 0 else 0
        for sample in samples:
            _check_sample(sample)
            pool.append(sample)
            if len(pool) < self.buffer:
                continue
            index = int(rng.integers(len(pool)))
            pool[index], pool[-1] = pool[-1], pool[index]
            batch.append(pool.pop())
            if len(batch) == self.batch_size:
                views = [self.draw_views(rng) for _ in batch]  # the same draws, decoded or not
                if skip:
                    skip -= 1
                else:
                    yield self.collate(batch, views)
                batch = []

    def draw_views(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        return select_views(rng, max_views=self.max_views, shuffle_prob=self.shuffle_prob,
                            self_view_prob=self.self_view_prob)

    def collate(self, batch: list[dict], views: list[tuple[int, np.ndarray]]) -> dict:
        size, n = self.image_size, len(batch)
        target = np.empty((n, size, size, 3), np.uint8)
        cond = np.zeros((n, self.max_views, size, size, 3), np.uint8)  # unused slots stay zero
        cond_views = np.full((n, self.max_views), -1, np.int64)
        angle, target_view = np.empty(n, np.float32), np.empty(n, np.int64)
        for i, sample in enumerate(batch):
            target_view[i], chosen = views[i]
            cond_views[i, : len(chosen)] = chosen
            decode_into(target[i], sample[_PNGS[target_view[i]]], where=_where(sample, target_view[i]))
            for j, view in enumerate(chosen):
                decode_into(cond[i, j], sample[_PNGS[view]], where=_where(sample, view))
            # The relative angle is taken after the 10% reshuffle, from the final reference.
            angle[i] = (relative_angle(target_view[i], chosen[0]) if self.relative
                        else nmr.view_angle(target_view[i]))
        out = {"y_0": _to_float(target), "y_cond": _to_float(cond),
               "view_count": torch.from_numpy((cond_views >= 0).sum(1)), "angle": torch.from_numpy(angle),
               "target_view": torch.from_numpy(target_view), "cond_views": torch.from_numpy(cond_views),
               "key": [sample["__key__"] for sample in batch]}
        if self.relative:
            out["y_ref"] = out["y_cond"][:, 0].clone()
        return out


def _where(sample: dict, view: int) -> str:
    return f"{sample.get('__url__')}: {sample['__key__']}.{view:04d}.png"


def _check_sample(sample: dict) -> None:
    missing = [name for name in _PNGS if name not in sample]
    if missing:
        raise ViewFusionError(f"{sample.get('__url__')}: object {sample.get('__key__')} lacks "
                              f"{len(missing)} views (first {missing[0]}): a truncated or foreign shard")


def train_loader(shard_dir, *, batch_size: int = 28, max_views: int = 6, shuffle_prob: float = 0.1,
                 self_view_prob: float = 0.0, relative: bool = False, num_workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, steps_per_epoch: int = 1000, split: str = "train",
                 shuffle_buffer: int = 1000, shard_order: str = "resample", skip_batches: int = 0):
    """An endless stream of training batches, cut into epochs of `steps_per_epoch`.

    Batches are dicts: `y_0` (B,3,H,W), `y_cond` (B,max_views,3,H,W) with zeros past each
    sample's `view_count` (B,), `angle` (B,) radians, `y_ref` (B,3,H,W) when `relative`, and
    `target_view` (B,), `cond_views` (B,max_views) (-1 = unused), `key` (list of str).
    `shard_order` is "resample" (shards drawn with replacement) or "epoch" (a seeded permutation
    per pass); `skip_batches` drops the stream's first batches, drawn but never decoded, so the
    rest equals the unskipped stream's from that batch on (a resume inside a loader segment).
    """
    import webdataset as wds

    if not 0 <= rank < world_size:
        raise ViewFusionError(f"rank {rank} is not in 0..{world_size - 1}")
    if shard_order not in SHARD_ORDERS:
        raise ViewFusionError(f"shard_order {shard_order!r} is not one of {', '.join(SHARD_ORDERS)}")
    if shuffle_buffer < 1 or skip_batches < 0:
        raise ViewFusionError(f"shuffle_buffer must be >= 1 and skip_batches >= 0, got {shuffle_buffer} "
                              f"and {skip_batches}")
    manifest = read_shard_manifest(shard_dir)
    # The manifest's size and sha256 travel with each url: workers verify a shard on opening it.
    shards = [{"url": str(Path(shard_dir) / entry["name"]), "bytes": entry["bytes"], "sha256": entry["sha256"]}
              for entry in split_shards(shard_dir, split, manifest=manifest)]
    if len(shards) % world_size:
        raise ViewFusionError(f"{shard_dir}: {len(shards)} {split} shards cannot be split evenly over "
                              f"{world_size} ranks; re-shard with --shards a multiple of {world_size}")
    pipeline = wds.DataPipeline(
        partial(iter, shards),  # a bare list would be spliced into the stages
        partial(split_by_node, rank=rank, world_size=world_size),
        split_by_worker,
        SHARD_ORDERS[shard_order](seed=seed, rank=rank),
        tar_samples,
        _Batches(seed=seed, rank=rank, batch_size=batch_size, max_views=max_views,
                 shuffle_prob=shuffle_prob, self_view_prob=self_view_prob, relative=relative,
                 image_size=manifest["image_size"], buffer=shuffle_buffer, skip=skip_batches),
    )
    # Persistent workers keep their stages (and so their epoch counters) between epochs;
    # fresh workers would replay the first epoch's draws every epoch.
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                           persistent_workers=num_workers > 0)
    drop = skip_batches % max(num_workers, 1)
    if not drop:
        return loader.with_epoch(steps_per_epoch)
    return _Drop(loader.with_epoch(steps_per_epoch + drop), drop, steps_per_epoch)


class _Drop:
    """`loader` with its first `drop` batches dropped in the first epoch, `steps` per epoch: the
    part of a skip that is not a whole round of the workers (decoded, then thrown away)."""

    def __init__(self, loader, drop: int, steps: int):
        self.loader, self.drop, self.steps = loader, drop, steps

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(self.drop):
            next(batches)
        self.drop = 0
        return islice(batches, self.steps)


# ---------------------------------------------------------------------------------- evaluation


def _read_shard(path: Path, image_size: int, wanted=None) -> Iterator[ObjectRecord]:
    """Records of one shard in file order (only `wanted` keys when given)."""
    for sample in _group(iter_tar(path), str(path)):
        if wanted is None or sample["__key__"] in wanted:
            yield _record(sample, image_size)


def _record(sample: dict, image_size: int) -> ObjectRecord:
    _check_sample(sample)
    key = sample["__key__"]
    if "cameras.npz" not in sample:
        raise ViewFusionError(f"{sample['__url__']}: object {key} lacks cameras.npz: a truncated or foreign shard")
    synset, object_id = nmr.split_key(key)
    return ObjectRecord(key, synset, object_id, tuple(sample[name] for name in _PNGS),
                        sample["cameras.npz"], image_size)


def _records(shard_dir, split: str, keys: list[str]) -> Iterator[ObjectRecord]:
    """Records of `keys` (a subset of the split) in manifest order; every key must be found."""
    manifest = read_shard_manifest(shard_dir)
    entries = split_shards(shard_dir, split, manifest=manifest)
    wanted, found, start = set(keys), set(), 0
    for entry in entries:
        block = manifest["splits"][split]["objects"][start : start + entry["objects"]]
        start += entry["objects"]
        if wanted.isdisjoint(block):
            continue  # no need to read shards that hold none of the wanted objects
        path = Path(shard_dir) / entry["name"]
        verify_shard(path, entry)
        for record in _read_shard(path, manifest["image_size"], wanted):
            found.add(record.key)
            yield record
    lost = wanted - found
    if lost:
        raise ViewFusionError(f"{shard_dir}: {len(lost)} {split} objects listed in the manifest are "
                              f"not in the shards (e.g. {min(lost)}); run `viewfusion data shard` again")


def eval_objects(shard_dir, split: str, *, rank: int = 0, world_size: int = 1) -> Iterator[ObjectRecord]:
    """Every object of `split` exactly once, in manifest order; rank r of W takes block r."""
    if not 0 <= rank < world_size:
        raise ViewFusionError(f"rank {rank} is not in 0..{world_size - 1}")
    keys = read_shard_manifest(shard_dir)["splits"].get(split, {}).get("objects")
    if keys is None:
        raise ViewFusionError(f"{shard_dir}: no split {split!r}")
    n = len(keys)
    yield from _records(shard_dir, split, keys[rank * n // world_size : (rank + 1) * n // world_size])


def load_objects(shard_dir, split: str, keys=None) -> dict[str, ObjectRecord]:
    """{key: ObjectRecord} for `keys` (all of the split when None); unknown keys are an error."""
    known = read_shard_manifest(shard_dir)["splits"].get(split, {}).get("objects")
    if known is None:
        raise ViewFusionError(f"{shard_dir}: no split {split!r}")
    keys = list(known) if keys is None else list(dict.fromkeys(keys))
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ViewFusionError(f"{shard_dir}: {len(unknown)} keys are not in the {split} split "
                              f"(e.g. {unknown[0]})")
    return {record.key: record for record in _records(shard_dir, split, keys)}
