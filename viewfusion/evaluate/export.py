"""`viewfusion export`: PNG files of packed samples (and their ground truth), for inspection.

    viewfusion export --generated results/samples/tiny/final/ddim-50-eta1/v3 \
        --manifest results/manifests/all/test-v3.json --out /tmp/look [--ground-truth] [--item ITEM ...]

Writes `{item}.png` (and `{item}.gt.png` from the manifest's ground-truth pack with
`--ground-truth`) for every item of the completed chunks, or the named ones. Each image is
checked against its chunk's fingerprint first, as `viewfusion metrics` does, so an exported
picture is always the one the tables scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viewfusion.data.manifest import read_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import samplestore
from viewfusion.fsutil import atomic_write_bytes, disk_errors


def export_pngs(generated, manifest, out, *, ground_truth: bool = False, items=None) -> int:
    """Write the PNGs of `items` (default: all completed) into `out`; returns the files written."""
    entries = {it["item"]: it for it in read_manifest(manifest)["items"]}
    samples = samplestore.FinishedSamples(generated)
    wanted = list(items) if items else [name for name in entries if name in samples.owner]
    for name in wanted:
        if name not in entries or name not in samples.owner:
            raise ViewFusionError(f"--item {name}: not an item of {manifest} in a completed chunk of {generated}")
    truth = samples.ground_truth(samplestore.ground_truth_path(manifest)) if ground_truth else None
    written = 0
    for name in wanted:  # manifest names are plain names (read_manifest checks them)
        atomic_write_bytes(Path(out) / f"{name}{samplestore.IMAGE}", samples.read(entries[name]))
        written += 1
        if truth is not None:
            atomic_write_bytes(Path(out) / f"{name}.gt{samplestore.IMAGE}", truth.read(entries[name]))
            written += 1
    samples.close()
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, help="a sample directory with completed chunks")
    parser.add_argument("--manifest", required=True, help="the evaluation manifest the samples were drawn from")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--ground-truth", action="store_true",
                        help="also write {item}.gt.png from the manifest's ground-truth pack")
    parser.add_argument("--item", action="append", default=None, help="only this item (repeatable)")


def run(args: argparse.Namespace) -> int:
    with disk_errors(args.out):
        count = export_pngs(args.generated, args.manifest, args.out, ground_truth=args.ground_truth, items=args.item)
    print(f"{count} PNG files -> {args.out}")
    return 0
