"""Loaders (issue 3, item 4): view selection, training stream, DDP splitting, evaluation order."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from viewfusion.data import nmr, shardmanifest
from viewfusion.data.loader import relative_angle, select_views, split_by_node, train_loader
from viewfusion.data.reader import iter_tar, load_objects
from viewfusion.data.shardmanifest import read_shard_manifest
from viewfusion.errors import ViewFusionError


def test_select_views_follows_the_paper():
    rng = np.random.default_rng(0)
    counts, target_in_cond = np.zeros(7, int), 0
    for _ in range(4000):
        target, cond = select_views(rng, max_views=6, shuffle_prob=0.1)
        assert 0 <= target < 24 and 1 <= len(cond) <= 6 and len(set(cond)) == len(cond)
        counts[len(cond)] += 1
        target_in_cond += target in cond
    assert counts[0] == 0 and counts[1:].min() > 550  # uniform over 1..6
    # Only the reshuffled 10% can contain the target: P = 0.1 * E[n]/24 = 0.1 * 3.5/24.
    assert 0.005 < target_in_cond / 4000 < 0.03
    for _ in range(500):
        target, cond = select_views(rng, max_views=6, shuffle_prob=0.0)
        assert target not in cond


def test_self_view_prob_puts_the_target_among_its_views():
    rng = np.random.default_rng(0)
    hits, positions = 0, set()
    for _ in range(2000):
        target, cond = select_views(rng, max_views=3, shuffle_prob=0.0, self_view_prob=0.6)
        assert 1 <= len(cond) <= 3 and len(set(cond)) == len(cond)  # replaced, never duplicated
        if target in cond:
            hits += 1
            positions.add(int(np.flatnonzero(cond == target)[0]))
    assert 0.55 < hits / 2000 < 0.65 and positions == {0, 1, 2}
    always = [select_views(rng, max_views=6, shuffle_prob=1.0, self_view_prob=1.0) for _ in range(200)]
    assert all(target in cond and len(set(cond)) == len(cond) for target, cond in always)


def test_relative_angle_wraps():
    assert relative_angle(3, 5) == pytest.approx(nmr.view_angle(22))
    assert relative_angle(5, 5) == 0.0


def _loader(shards, **kwargs):
    args = {"batch_size": 4, "num_workers": 0, "steps_per_epoch": 3, "shuffle_buffer": 8, "seed": 0}
    return train_loader(shards, **{**args, **kwargs})


def test_train_batches_hold_the_selected_views(synth_shards):
    records = load_objects(synth_shards, "train")
    batches = list(_loader(synth_shards, max_views=5))
    assert len(batches) == 3
    for batch in batches:
        assert batch["y_0"].shape == (4, 3, 64, 64) and batch["y_0"].dtype == torch.float32
        assert batch["y_cond"].shape == (4, 5, 3, 64, 64) and "y_ref" not in batch
        assert batch["view_count"].dtype == torch.long and batch["angle"].shape == (4,)
        for i, key in enumerate(batch["key"]):
            target, n = int(batch["target_view"][i]), int(batch["view_count"][i])
            assert torch.equal(batch["y_0"][i], records[key].image(target))
            assert batch["angle"][i] == pytest.approx(2 * math.pi / 24 * target)
            for j, view in enumerate(batch["cond_views"][i, :n].tolist()):
                assert torch.equal(batch["y_cond"][i, j], records[key].image(view))
            assert (batch["cond_views"][i, n:] == -1).all() and (batch["y_cond"][i, n:] == 0).all()


def test_relative_angle_is_taken_after_the_reshuffle(synth_shards):
    records = load_objects(synth_shards, "train")
    for batch in _loader(synth_shards, relative=True, shuffle_prob=1.0, steps_per_epoch=4):
        assert torch.equal(batch["y_ref"], batch["y_cond"][:, 0])
        for i, key in enumerate(batch["key"]):
            target, ref = int(batch["target_view"][i]), int(batch["cond_views"][i, 0])
            assert batch["angle"][i] == pytest.approx(relative_angle(target, ref))
            assert torch.equal(batch["y_ref"][i], records[key].image(ref))


def _keys(loader) -> list[list[str]]:
    return [batch["key"] for batch in loader]


def test_seeded_and_epochs_differ(synth_shards):
    a, b = _loader(synth_shards, seed=1), _loader(synth_shards, seed=1)
    epoch_a1, epoch_a2 = _keys(a), _keys(a)
    assert epoch_a1 == _keys(b)
    assert epoch_a1 != epoch_a2  # a new epoch draws anew instead of replaying
    assert _keys(_loader(synth_shards, seed=2)) != epoch_a1


def test_ranks_get_disjoint_shards_and_equal_steps(synth_shards):
    manifest = read_shard_manifest(synth_shards)
    shard_keys = [set(manifest["splits"]["train"]["objects"][:9]), set(manifest["splits"]["train"]["objects"][9:])]
    seen = []
    for rank in range(2):
        batches = list(_loader(synth_shards, rank=rank, world_size=2, steps_per_epoch=5))
        assert len(batches) == 5
        seen.append({key for batch in batches for key in batch["key"]})
    assert seen[0] <= shard_keys[0] and seen[1] <= shard_keys[1]
    assert list(split_by_node([{"url": u} for u in "abcd"], rank=1, world_size=2)) == [{"url": "b"}, {"url": "d"}]


def test_workers_yield_exact_step_count(synth_shards):
    loader = _loader(synth_shards, num_workers=2, steps_per_epoch=6)
    first, second = _keys(loader), _keys(loader)
    assert len(first) == len(second) == 6 and first != second


@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_batches_leave_the_rest_of_the_stream_unchanged(synth_shards, workers):
    """A resume inside a loader segment skips its first batches: the rest must be the same
    batches, with the same views and pixels, as the unskipped stream's (issue 21)."""
    full = list(_loader(synth_shards, num_workers=workers, steps_per_epoch=7, seed=3))
    tail = list(_loader(synth_shards, num_workers=workers, steps_per_epoch=4, seed=3, skip_batches=3))
    assert [b["key"] for b in tail] == [b["key"] for b in full[3:]]
    for got, want in zip(tail, full[3:]):
        assert torch.equal(got["cond_views"], want["cond_views"]) and torch.equal(got["y_0"], want["y_0"])


def test_epoch_shard_order_reads_every_shard_once_per_pass(synth_shards):
    keys = read_shard_manifest(synth_shards)["splits"]["train"]["objects"]  # 18, 9 per shard
    for seed in range(4):
        seen = [k for batch in _loader(synth_shards, shard_order="epoch", shuffle_buffer=1, batch_size=6,
                                       steps_per_epoch=6, seed=seed) for k in batch["key"]]
        assert sorted(seen[:18]) == sorted(seen[18:]) == sorted(keys)  # each pass: all objects once


def test_shuffle_initial_picks_before_the_buffer_is_full(synth_shards):
    """data.shuffle_initial (the official code's webdataset default holds 100): the first picks
    come from the first samples read; a buffer filled first picks from all it holds."""
    keys = read_shard_manifest(synth_shards)["splits"]["train"]["objects"]  # 9 per shard, in order
    heads = [set(keys[:4]), set(keys[9:13])]  # 1 held + 1 read before the first pick, then 2 per pick
    for seed in range(4):
        first = set(next(iter(_loader(synth_shards, batch_size=2, shuffle_buffer=1000, shuffle_initial=1,
                                      seed=seed)))["key"])
        assert any(first <= head for head in heads), (seed, first)
    filled = [set(next(iter(_loader(synth_shards, batch_size=2, shuffle_buffer=1000, seed=s)))["key"])
              for s in range(4)]
    assert not all(any(f <= head for head in heads) for f in filled)


def test_bad_stream_settings_are_one_clear_error(synth_shards):
    with pytest.raises(ViewFusionError, match="shard_order 'sorted' is not one of resample, epoch"):
        _loader(synth_shards, shard_order="sorted")
    with pytest.raises(ViewFusionError, match="shuffle_buffer must be >= 1"):
        _loader(synth_shards, shuffle_buffer=0)
    with pytest.raises(ViewFusionError, match="shuffle_initial in 1..shuffle_buffer"):
        _loader(synth_shards, shuffle_buffer=4, shuffle_initial=5)


def test_world_size_must_divide_shards(synth_shards):
    with pytest.raises(ViewFusionError, match="cannot be split evenly over 3 ranks"):
        _loader(synth_shards, world_size=3)


def test_load_objects_every_object_once_in_order(synth_shards):
    keys = read_shard_manifest(synth_shards)["splits"]["train"]["objects"]
    assert list(load_objects(synth_shards, "train")) == keys
    record = next(iter(load_objects(synth_shards, "test").values()))
    assert record.images.shape == (24, 3, 64, 64) and 0 <= record.images.min() < record.images.max() <= 1
    assert record.cameras["world_mat_3"].shape == (4, 4) and record.synset + "_" + record.object_id == record.key


def test_load_objects_subset_and_unknown_key(synth_shards):
    keys = read_shard_manifest(synth_shards)["splits"]["test"]["objects"]
    assert list(load_objects(synth_shards, "test", keys=[keys[-1], keys[0]])) == [keys[0], keys[-1]]
    with pytest.raises(ViewFusionError, match="not in the test split"):
        load_objects(synth_shards, "test", keys=["02691156_nope"])


def test_truncated_shard_is_an_error(synth_shards, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(synth_shards, copy)
    shard = copy / "nmr-train-0001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ViewFusionError, match="nmr-train-0001.tar is .* bytes, the manifest says"):
        _loader(copy)
    with pytest.raises(ViewFusionError, match="truncated or modified"):
        load_objects(copy, "train")
    with pytest.raises(ViewFusionError, match="is truncated"):
        list(iter_tar(shard))  # the reader itself also notices, even without the manifest


def test_a_duplicate_member_is_one_clear_error_naming_the_shard(tmp_path):
    """webdataset's grouping refuses a key holding the same member twice (the old reader kept the
    last copy silently); the error is the project's, naming the shard."""
    import hashlib
    import io
    import tarfile

    from viewfusion.data.reader import tar_samples

    shard = tmp_path / "dup.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("k.0000.png", "k.0000.png"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"png"))
    entry = {"url": str(shard), "bytes": shard.stat().st_size, "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}
    with pytest.raises(ViewFusionError, match=r"shard .*dup\.tar: .*duplicate.*viewfusion data shard"):
        list(tar_samples([entry]))


# ---------------------------------------------------------------- checksums (issue 16, item 1)


def _copy(synth_shards, tmp_path):
    import shutil

    return Path(shutil.copytree(synth_shards, tmp_path / "shards"))


def _flip(path: Path, offset: int, *, keep_mtime: bool = False) -> None:
    """Flip one byte in place: same size, and with keep_mtime the same mtime as before."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_one_corrupt_byte_is_caught_by_every_reader(synth_shards, tmp_path):
    copy = _copy(synth_shards, tmp_path)
    shard = copy / "nmr-train-0001.tar"
    _flip(shard, shard.stat().st_size // 2)  # same size: only the sha256 can tell
    sha = read_shard_manifest(copy)["splits"]["train"]["shards"][1]["sha256"]
    message = rf"shard .*nmr-train-0001.tar: sha256 is [0-9a-f]{{64}}, the manifest says {sha}: .*viewfusion data shard"
    with pytest.raises(ViewFusionError, match=message):
        next(iter(_loader(copy, rank=1, world_size=2)))
    with pytest.raises(ViewFusionError, match=message):
        load_objects(copy, "train")
    with pytest.raises(ViewFusionError, match=message):
        load_objects(copy, "train")
    assert len(load_objects(copy, "test")) == 5  # intact shards still load
    assert len(next(iter(_loader(copy, rank=0, world_size=2)))["key"]) == 4


def test_zero_sha256_in_the_manifest_is_refused(synth_shards, tmp_path):
    copy = _copy(synth_shards, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["test"]["shards"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ViewFusionError,
                       match=f"nmr-test-0000.tar: sha256 is [0-9a-f]{{64}}, the manifest says {'0' * 64}"):
        load_objects(copy, "test")
    with pytest.raises(ViewFusionError, match="the manifest says 0000"):
        next(iter(_loader(copy, split="test")))


def test_each_shard_is_hashed_once_per_process(synth_shards, tmp_path):
    copy = _copy(synth_shards, tmp_path)
    load_objects(copy, "test")
    hashed = {Path(entry[0]).name for entry in shardmanifest._VERIFIED if entry[0].startswith(str(copy.resolve()))}
    assert hashed == {"nmr-test-0000.tar", "nmr-test-0001.tar"}
    # Corrupt the end-of-archive padding (the tar reader never looks at it), keeping size and
    # mtime: this process trusts its cache and reads on; a new process hashes and refuses.
    shard = copy / "nmr-test-0000.tar"
    _flip(shard, shard.stat().st_size - 1, keep_mtime=True)
    assert len(load_objects(copy, "test")) == 5
    code = f"from viewfusion.data.reader import load_objects; load_objects({str(copy)!r}, 'test')"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert fresh.returncode != 0 and "nmr-test-0000.tar: sha256 is" in fresh.stderr
    os.utime(shard)  # a new mtime: a rewritten file is hashed again
    with pytest.raises(ViewFusionError, match="nmr-test-0000.tar: sha256 is"):
        load_objects(copy, "test")
