"""Data-stage throughput, printed as ONE JSON line.

    .venv/bin/python benchmarks/data.py                      # 200 objects, 2 render workers
    .venv/bin/python benchmarks/data.py --objects 300 --workers 2 --batches 60

- synth: `write_synth_zip` objects/s with --workers processes.
- shard: `write_shards` objects/s and MB/s of member payload (PNG + npz bytes), beside a plain
  copy of the same bytes measured in the same run: the same members read from the zip in the
  same order and written to one file (fsynced, like the shards). `shard_vs_copy` is the time
  ratio (target <= 3). `zip_file_copy_mb_s` (copying the zip file as one block) is context only.
- loader: training batches (batch 28, max_views 6, as the paper) decoded in this one process,
  i.e. one DataLoader worker: samples/s per worker core (target >= 300), as shipped (tar headers
  read by `reader.iter_tar`) and with webdataset's own tar reader (`wds.tarfile_samples`) in its
  place, measured in the same run (`loader_wds_tar_samples_per_s_per_worker`); `tar_read_*`: the
  two readers alone (samples/s read and grouped from the train shards, nothing decoded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import webdataset as wds

from viewfusion.data import nmr, reader
from viewfusion.data.loader import train_loader
from viewfusion.data.shard import write_shards
from viewfusion.data.shardmanifest import read_shard_manifest, split_shards
from viewfusion.data.synth import write_synth_zip


def _members(zip_path: Path, keys: list[str]) -> list[str]:
    names = []
    for key in keys:
        synset, object_id = nmr.split_key(key)
        names += [nmr.image_member(synset, object_id, v) for v in range(nmr.NUM_VIEWS)]
        names.append(nmr.cameras_member(synset, object_id))
    return names


def plain_copy(zip_path: Path, keys: list[str], out: Path) -> tuple[float, int]:
    """Seconds and bytes to read the members of `keys` from the zip and write them to one file."""
    import zipfile

    start, size = time.perf_counter(), 0
    with zipfile.ZipFile(zip_path) as zf, open(out, "wb") as fh:
        for name in _members(zip_path, keys):
            data = zf.read(name)
            fh.write(data)
            size += len(data)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - start, size


def loader_rate(shards: Path, *, batches: int) -> float:
    loader = train_loader(shards, batch_size=28, max_views=6, num_workers=0, steps_per_epoch=batches + 5,
                          shuffle_buffer=64)
    stream = iter(loader)
    for _ in range(5):  # fill the shuffle buffer first: steady state is what a worker sustains
        next(stream)
    start = time.perf_counter()
    samples = sum(len(batch["key"]) for batch in stream)
    return samples / (time.perf_counter() - start)


def _wds_samples(path):
    """webdataset's own tar reading of one shard (the alternative to `reader.iter_tar`)."""
    return wds.tarfile_samples([{"url": str(path)}])


def with_wds_tar(measure, *args, **kwargs):
    """`measure` with the loader reading shards through `_wds_samples` instead of `iter_tar`."""
    own, reader._samples = reader._samples, _wds_samples
    try:
        return measure(*args, **kwargs)
    finally:
        reader._samples = own


def tar_read_rate(shards: Path, repeats: int = 3) -> float:
    """Best of `repeats`: samples/s read and grouped from the train shards (none decoded)."""
    paths = [shards / entry["name"] for entry in split_shards(shards, "train")]
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(1 for path in paths for _ in reader._samples(path))
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vf-bench-") as tmp:
        tmp = Path(tmp)
        synth = write_synth_zip(tmp / "NMR_Dataset.zip", objects=args.objects, seed=0, workers=args.workers)
        shard = write_shards(tmp / "NMR_Dataset.zip", tmp / "shards", shards=2)
        manifest = read_shard_manifest(tmp / "shards")
        keys = [k for split in manifest["splits"].values() for k in split["objects"]]
        copy_s, payload = plain_copy(tmp / "NMR_Dataset.zip", keys, tmp / "copy.bin")
        start = time.perf_counter()
        shutil.copyfile(tmp / "NMR_Dataset.zip", tmp / "copy.zip")
        file_copy_s = time.perf_counter() - start
        rate = loader_rate(tmp / "shards", batches=args.batches)
        wds_rate = with_wds_tar(loader_rate, tmp / "shards", batches=args.batches)
        tar_own, tar_wds = tar_read_rate(tmp / "shards"), with_wds_tar(tar_read_rate, tmp / "shards")
    result = {
        "objects": args.objects, "synth_workers": args.workers,
        "synth_objects_per_s": synth["objects_per_s"],
        "shard_objects_per_s": shard["objects_per_s"],
        "shard_payload_mb_s": round(payload / shard["seconds"] / 1e6, 1),
        "copy_payload_mb_s": round(payload / copy_s / 1e6, 1),
        "shard_vs_copy": round(shard["seconds"] / copy_s, 2),
        "zip_file_copy_mb_s": round(synth["bytes"] / file_copy_s / 1e6, 1),
        "payload_kb_per_object": round(payload / len(keys) / 1e3, 1),
        "loader_samples_per_s_per_worker": round(rate, 1),
        "loader_wds_tar_samples_per_s_per_worker": round(wds_rate, 1),
        "tar_read_own_samples_per_s": round(tar_own, 1),
        "tar_read_wds_samples_per_s": round(tar_wds, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
