"""Streaming loaders over the shards of `viewfusion data shard` (webdataset 1.x).

    from viewfusion.data.loader import train_loader
    loader = train_loader("data/shards", batch_size=28, rank=rank, world_size=4, num_workers=2,
                          seed=0, steps_per_epoch=1000)
    for batch in loader:          # exactly steps_per_epoch batches per epoch, on every rank
        batch["y_0"], batch["y_cond"], batch["view_count"], batch["angle"]

Training: the split's shard list goes through an explicit `split_by_node` (rank r of W takes
shards r, r+W, ...; W must divide the shard count) and `split_by_worker`, then each worker reads
shards forever (drawn with replacement, or a seeded permutation per pass: `shard_order`),
shuffles samples in webdataset's buffer of `shuffle_buffer` and builds whole batches;
`with_epoch(steps_per_epoch)` cuts every rank's stream to the same number of steps. All
randomness comes from `numpy.random.default_rng([seed, rank, worker, epoch, stage])`.

webdataset does the pipeline, the loader, the epoch cut, the sample grouping and the shuffle.
Four stages stay hand-written, each for a reason in its docstring: the tar header reader
(`iter_tar`, 2.4x the loader's samples/s), the node and worker splits (an explicit rank, equal
shards per rank, no idle worker) and the seeded shard orders (webdataset's `resampled` stage is
unseeded; `ResampledShards` is a source, so it cannot follow the worker split).

View selection (the paper's, `select_views`): a random permutation of the 24 views; the first
is the target, the next `view_count` (uniform in 1..max_views per sample) condition it. With
probability `shuffle_prob` (0.1) the conditioning views are drawn afresh from all 24, so the
target may be among them. `self_view_prob` (0 in the paper) then puts the target itself among
them, so a small model learns to carry the views' appearance over early. `relative=True` adds the
reference view (the first conditioning view) and makes the angle target minus reference,
computed after that reshuffle (the official code took the reference before it, so those samples
got a wrong angle).

Shards are read by `viewfusion.data.reader` (verified against the manifest first).
"""

from __future__ import annotations

import random
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from viewfusion import config
from viewfusion.data import nmr
from viewfusion.data.reader import VIEW_MEMBERS, decode_into, member_where, tar_samples, to_float
from viewfusion.data.shardmanifest import read_shard_manifest, split_shards
from viewfusion.errors import ViewFusionError


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


# ------------------------------------------------------------------------------------ training


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def split_by_node(shards, *, rank: int, world_size: int):
    """Rank `rank` of `world_size` takes every world_size-th shard, starting at its rank.

    Not `wds.split_by_node`: that one reads the rank from torch.distributed or the environment
    (ours is given, so tests and tools split without a process group) and splits unevenly when
    the shard count is not a multiple of the ranks (ours refuses: equal data per rank)."""
    urls = list(shards)
    if len(urls) % world_size:
        raise ViewFusionError(f"{len(urls)} shards cannot be split evenly over {world_size} ranks; "
                              f"re-shard with --shards a multiple of {world_size}")
    yield from urls[rank::world_size]


def split_by_worker(shards):
    """Each DataLoader worker takes every num_workers-th of its rank's shards; with fewer shards
    than workers, all workers share them (they still draw differently: seeds differ).

    Not `wds.split_by_worker`: it leaves a worker without shards idle, and exact resume counts
    on every worker yielding its turn (`_Batches` skips whole rounds of the workers)."""
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
    """Infinite stream of this worker's shards drawn with replacement, seeded: webdataset's
    `resampled` stage seeds itself from /dev/random, and its `ResampledShards` is a pipeline
    source, fixed before the worker split runs."""

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


# The names are config.SHARD_ORDERS' (a config never imports torch); strict: a new name needs a stage.
SHARD_ORDERS = dict(zip(config.SHARD_ORDERS, (_Resample, _EpochShards), strict=True))


class _Shuffle(_Seeded):
    """webdataset's shuffle buffer (`wds.shuffle`: picks start once `initial` samples are held,
    two are read per pick until `buffer` are, then one), with a Python generator seeded from
    this stage's seeds."""

    stage = 3

    def __init__(self, *, seed: int, rank: int, buffer: int, initial: int):
        super().__init__(seed=seed, rank=rank)
        self.buffer, self.initial = buffer, initial

    def __call__(self, samples):
        rng = random.Random(int(self._rng().integers(2**63)))
        return wds.shuffle(self.buffer, self.initial, rng=rng)(iter(samples))


class _Batches(_Seeded):
    """View selection and batch decoding into preallocated uint8 arrays."""

    stage = 2

    def __init__(self, *, seed, rank, batch_size, max_views, shuffle_prob, self_view_prob, relative,
                 image_size, skip=0):
        super().__init__(seed=seed, rank=rank)
        self.batch_size, self.max_views, self.shuffle_prob = batch_size, max_views, shuffle_prob
        self.self_view_prob = self_view_prob
        self.relative, self.image_size = relative, image_size
        self.skip = skip  # batches of this worker to draw but not decode (a mid-segment resume)

    def __call__(self, samples):
        rng, batch = self._rng(), []
        # The loader takes batches from its workers in turn, starting at worker 0: each skips
        # whole rounds here, and `_Drop` drops the rest of the skip in the main process.
        skip = self.skip // _worker()[1] if self.epoch == 0 else 0
        for sample in samples:
            batch.append(sample)
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
            decode_into(target[i], sample[VIEW_MEMBERS[target_view[i]]], where=member_where(sample, target_view[i]))
            for j, view in enumerate(chosen):
                decode_into(cond[i, j], sample[VIEW_MEMBERS[view]], where=member_where(sample, view))
            # The relative angle is taken after the 10% reshuffle, from the final reference.
            angle[i] = (relative_angle(target_view[i], chosen[0]) if self.relative
                        else nmr.view_angle(target_view[i]))
        out = {"y_0": to_float(target), "y_cond": to_float(cond),
               "view_count": torch.from_numpy((cond_views >= 0).sum(1)), "angle": torch.from_numpy(angle),
               "target_view": torch.from_numpy(target_view), "cond_views": torch.from_numpy(cond_views),
               "key": [sample["__key__"] for sample in batch]}
        if self.relative:
            out["y_ref"] = out["y_cond"][:, 0].clone()
        return out


def train_loader(shard_dir, *, batch_size: int = 28, max_views: int = 6, shuffle_prob: float = 0.1,
                 self_view_prob: float = 0.0, relative: bool = False, num_workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, steps_per_epoch: int = 1000, split: str = "train",
                 shuffle_buffer: int = 1000, shuffle_initial: int | None = None, shard_order: str = "resample",
                 skip_batches: int = 0):
    """An endless stream of training batches, cut into epochs of `steps_per_epoch`.

    Batches are dicts: `y_0` (B,3,H,W), `y_cond` (B,max_views,3,H,W) with zeros past each
    sample's `view_count` (B,), `angle` (B,) radians, `y_ref` (B,3,H,W) when `relative`, and
    `target_view` (B,), `cond_views` (B,max_views) (-1 = unused), `key` (list of str).
    `shard_order` is "resample" (shards drawn with replacement) or "epoch" (a seeded permutation
    per pass); `shuffle_initial` samples are held before the buffer's first pick (None: all
    `shuffle_buffer`; webdataset's and the official code's default is 100); `skip_batches` drops
    the stream's first batches, drawn but never decoded, so the rest equals the unskipped
    stream's from that batch on (a resume inside a loader segment).
    """
    if not 0 <= rank < world_size:
        raise ViewFusionError(f"rank {rank} is not in 0..{world_size - 1}")
    if shard_order not in SHARD_ORDERS:
        raise ViewFusionError(f"shard_order {shard_order!r} is not one of {', '.join(SHARD_ORDERS)}")
    initial = shuffle_buffer if shuffle_initial is None else shuffle_initial
    if shuffle_buffer < 1 or not 1 <= initial <= shuffle_buffer or skip_batches < 0:
        raise ViewFusionError(f"shuffle_buffer must be >= 1, shuffle_initial in 1..shuffle_buffer and "
                              f"skip_batches >= 0, got {shuffle_buffer}, {shuffle_initial} and {skip_batches}")
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
        _Shuffle(seed=seed, rank=rank, buffer=shuffle_buffer, initial=initial),
        _Batches(seed=seed, rank=rank, batch_size=batch_size, max_views=max_views,
                 shuffle_prob=shuffle_prob, self_view_prob=self_view_prob, relative=relative,
                 image_size=manifest["image_size"], skip=skip_batches),
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
