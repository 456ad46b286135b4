"""`viewfusion data viewlist`: a pixelNeRF-style source-view list for a split of our shards.

    viewfusion data viewlist --shards results/shards/softras --split test --seed 0 \
        --out results/manifests/softras/viewlist.txt

pixelNeRF's one-view protocol fixes one source view per object with `viewlist/src_dvr.txt`
(lines `synset object_id view`). The real NMR run uses that file as given (config
`evaluation.viewlist`); for the synthetic dataset, which it does not cover, this command makes
the same kind of list: one view per object of the split, drawn uniformly from 0..23 with a
generator seeded by (seed, object), sorted by synset and object id.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from viewfusion.data import nmr
from viewfusion.data.manifest import key_int
from viewfusion.data.shardmanifest import read_shard_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_bytes


def viewlist_lines(keys: list[str], *, seed: int) -> list[str]:
    """`synset object_id view` per object key, the view seeded by (seed, object)."""
    lines = []
    for key in sorted(keys):
        synset, object_id = nmr.split_key(key)
        view = int(np.random.default_rng([seed, 2, key_int(key)]).integers(nmr.NUM_VIEWS))
        lines.append(f"{synset} {object_id} {view}")
    return lines


def write_viewlist(shard_dir, *, split: str, seed: int, out) -> int:
    """Write the list for `split` of `shard_dir` to `out` (atomically); returns its line count."""
    nmr.check_count(seed, "--seed", minimum=0, maximum=nmr.MAX_SEED)
    splits = read_shard_manifest(shard_dir)["splits"]
    if split not in splits:
        raise ViewFusionError(f"{shard_dir}: no split {split!r} (have {', '.join(splits)})")
    lines = viewlist_lines(splits[split]["objects"], seed=seed)
    atomic_write_bytes(Path(out), ("\n".join(lines) + "\n").encode())
    return len(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="shard directory")
    parser.add_argument("--split", default="test", help="split whose objects get a source view")
    parser.add_argument("--seed", type=int, default=0, help="seed of the source views")
    parser.add_argument("--out", required=True, help="the list to write (`synset object_id view` lines)")


def run(args: argparse.Namespace) -> int:
    n = write_viewlist(args.shards, split=args.split, seed=args.seed, out=args.out)
    print(f"{args.out}: {n} objects")
    return 0
