"""`viewfusion ground-truth`: the ground truth of an evaluation manifest, once, as one pack.

    viewfusion ground-truth --manifest results/manifests/all/test-v3.json --shards results/shards/all
        # -> results/manifests/all/test-v3.gt.tar (viewfusion.evaluate.samplestore.ground_truth_path)

The ground truth of a target is its view from the shards as an 8-bit PNG, tagged with the
fingerprint of the data (viewfusion.evaluate.provenance.ground_truth_settings) and its manifest entry:
one pack per manifest serves every experiment, checkpoint and sampler scored on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viewfusion.data.manifest import read_manifest
from viewfusion.data.shardmanifest import data_sha256
from viewfusion.evaluate import provenance, samplestore
from viewfusion.fsutil import disk_errors


def write_ground_truth(manifest, shards, out=None) -> Path:
    """Write the ground-truth pack of `manifest` (default: beside it) and return its path."""
    from viewfusion.data.reader import load_objects
    from viewfusion.evaluate.sample import encode_png

    man = read_manifest(manifest)
    out = Path(out) if out is not None else samplestore.ground_truth_path(manifest)
    fp = provenance.fingerprint(provenance.ground_truth_settings(data_sha256(shards, man["split"])))
    objects = load_objects(shards, man["split"], keys={it["key"] for it in man["items"]})
    members = ((it["item"] + samplestore.IMAGE,
                encode_png(objects[it["key"]].image(it["target_view"]), provenance.made_by(fp, it)))
               for it in man["items"])
    samplestore.write_pack(out, members)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="evaluation manifest (viewfusion data manifest)")
    parser.add_argument("--shards", required=True, help="shard directory holding the manifest's split")
    parser.add_argument("--out", default=None, help="pack to write (default: the manifest's name with .gt.tar)")


def run(args: argparse.Namespace) -> int:
    with disk_errors(args.out or args.manifest):
        out = write_ground_truth(args.manifest, args.shards, args.out)
    print(f"ground truth of {args.manifest} -> {out}")
    return 0
