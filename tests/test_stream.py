"""The training stream against independent uniform draws (issue 21, item 4).

On the demo's data layout (260 synthetic objects, 182 in train over 13 categories, 2 train shards;
32 px to keep it fast), the loader's key stream is compared with streams of independent uniform
draws of the same length, statistic by statistic:

- `dispersion`: how unevenly objects are seen within windows of one pass (182 samples): the
  chi-square of the per-object counts over its degrees of freedom, averaged over windows (1 for
  independent draws; above: some objects missing for a while, below: an epoch-like rotation);
- `lag1`: objects shared by consecutive batches (8 x 8 / 182 ~ 0.35 pairs for independent draws);
- `short_gaps`: the share of re-sightings of an object within a quarter pass (~0.22);
- `category_mix`: the chi-square of the category counts of every 4 consecutive batches over its
  degrees of freedom (1 for independent draws).

A statistic passes when it lies within TOLERANCE standard deviations of the independent draws'
mean (both estimated from simulated independent streams). The stream of the configured default
(`DataConfig()`) must pass every one; a stream with no shuffling (buffer 1) must fail.
"""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys

import numpy as np
import pytest

from viewfusion.config import DataConfig
from viewfusion.data.loader import train_loader
from viewfusion.data.shardmanifest import read_shard_manifest

BATCH, BATCHES, SIMULATED = 8, 400, 200
TOLERANCE = 4.0  # standard deviations; an independent stream exceeds it in ~1 of 16000 statistics


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """The demo's 260 objects (seed 0) in 2 shards per split, at 32 px."""
    out = tmp_path_factory.mktemp("stream")
    cli = [sys.executable, "-m", "viewfusion.cli", "data"]
    subprocess.run([*cli, "synth", "--objects", "260", "--seed", "0", "--image-size", "32", "--workers", "1",
                    "--out", str(out / "z.zip")], check=True, capture_output=True)
    subprocess.run([*cli, "shard", "--zip", str(out / "z.zip"), "--out", str(out / "shards"), "--shards", "2",
                    "--image-size", "32"], check=True, capture_output=True)
    return out / "shards"


def stream_stats(objects: np.ndarray, categories: np.ndarray, n_objects: int) -> dict[str, float]:
    """The four statistics of a stream of object indices (batches of BATCH in order)."""
    n, window = len(objects), n_objects
    counts = [np.bincount(objects[i : i + window], minlength=n_objects) for i in range(0, n - window + 1, window)]
    expected = window / n_objects
    dispersion = np.mean([((c - expected) ** 2).sum() / expected for c in counts]) / (n_objects - 1)
    batches = objects.reshape(-1, BATCH)
    lag1 = np.mean([np.isin(a, b).sum() for a, b in itertools.pairwise(batches)])
    last, gaps = np.full(n_objects, -1), []
    for t, o in enumerate(objects):
        if last[o] >= 0:
            gaps.append(t - last[o])
        last[o] = t
    share = np.bincount(categories, minlength=categories.max() + 1) / n_objects
    span = 4 * BATCH
    cats = [np.bincount(categories[objects[i : i + span]], minlength=len(share)) for i in range(0, n, span)]
    mix = np.mean([((c - span * share) ** 2 / (span * share)).sum() for c in cats]) / (len(share) - 1)
    return {"dispersion": dispersion, "lag1": lag1, "short_gaps": np.mean(np.array(gaps) < n_objects // 4),
            "category_mix": mix}


def _split(shards) -> tuple[dict[str, int], np.ndarray]:
    keys = read_shard_manifest(shards)["splits"]["train"]["objects"]
    synsets = sorted({k.split("_")[0] for k in keys})
    return {k: i for i, k in enumerate(keys)}, np.array([synsets.index(k.split("_")[0]) for k in keys])


@functools.cache
def reference(n_objects: int, category_list: tuple[int, ...]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each statistic over SIMULATED independent uniform streams."""
    rng, categories = np.random.default_rng(0), np.array(category_list)
    runs = [stream_stats(rng.integers(n_objects, size=BATCH * BATCHES), categories, n_objects)
            for _ in range(SIMULATED)]
    return {name: (np.mean([r[name] for r in runs]), np.std([r[name] for r in runs], ddof=1)) for name in runs[0]}


def z_scores(shards, **loader_args) -> dict[str, float]:
    """Each statistic of the loader's stream in standard deviations from independent draws."""
    index, categories = _split(shards)
    loader = train_loader(shards, batch_size=BATCH, max_views=1, num_workers=0, steps_per_epoch=BATCHES,
                          **loader_args)
    objects = np.array([index[k] for batch in loader for k in batch["key"]])
    ref = reference(len(index), tuple(categories.tolist()))
    return {name: (value - ref[name][0]) / ref[name][1]
            for name, value in stream_stats(objects, categories, len(index)).items()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_the_default_stream_looks_like_independent_uniform_draws(demo_shards, seed):
    defaults = DataConfig()
    z = z_scores(demo_shards, seed=seed, shuffle_buffer=defaults.shuffle_buffer, shard_order=defaults.shard_order)
    assert all(abs(v) <= TOLERANCE for v in z.values()), z


@pytest.mark.slow
def test_a_stream_without_shuffling_fails_the_check(demo_shards):
    """Buffer 1: the shards' object order as it is. No object comes back within a pass."""
    z = z_scores(demo_shards, seed=0, shuffle_buffer=1)
    assert z["lag1"] < -TOLERANCE and z["short_gaps"] < -TOLERANCE, z
