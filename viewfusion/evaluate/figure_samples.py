"""`viewfusion sample-figures`: what the paper's Figure 2 (view weights) and Figure 3
(autoregressive generation) show, sampled for one object.

    viewfusion sample-figures --checkpoint results/runs/tiny/final.pt --shards results/shards/all \
        --split test --sampler ddim --steps 50 --out results/figure_samples/tiny

Writes `weights/` (a sample directory of `viewfusion sample`, with view weights, fingerprinted
like every sample, and its manifest's ground truth `manifest.gt.tar`), `autoregressive/` (PNGs +
sequence.json) and `done.json` last, which records the checkpoint's weights and config
fingerprints and the sampler. Layout: docs/FORMATS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from viewfusion.data.manifest import FIGURE_SOURCE, item_name
from viewfusion.data.nmr import NUM_VIEWS
from viewfusion.data.reader import load_objects
from viewfusion.data.shardmanifest import read_shard_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate.groundtruth import write_ground_truth
from viewfusion.evaluate.sample import (
    add_sampler_arguments,
    check_options,
    encode_png,
    load_sampling_model,
    sample_chunk,
    spec_of,
)
from viewfusion.evaluate.targets import generate_batch, target_angles
from viewfusion.fsutil import atomic_write_bytes, atomic_write_json
from viewfusion.model.device import resolve_device
from viewfusion.model.samplers import SAMPLER_KINDS, SamplerSpec, spacing_of

FIGURE_COND_VIEWS = (0, 4, 8, 12, 16, 20)  # six inputs spread around the object, as in Fig. 2
FIGURE_TARGET_STRIDE = 2  # targets every 30 degrees: the weights shift smoothly enough to follow


def figure_object(shards: str, split: str, *, seed: int, key: str | None) -> str:
    """The object the figures show: `key`, or one drawn with `seed` from the split."""
    splits = read_shard_manifest(shards)["splits"]
    if split not in splits:
        raise ViewFusionError(f"--split {split!r}: {shards} has splits {', '.join(splits)}")
    objects = splits[split]["objects"]
    if key is not None:
        if key not in objects:
            raise ViewFusionError(f"--object {key!r} is not in split {split!r} of {shards}")
        return key
    return objects[np.random.default_rng(seed).integers(len(objects))]


def weights_manifest(key: str, *, split: str, seed: int) -> dict:
    synset, object_id = key.split("_", 1)
    items = [
        {"item": item_name(key, t, len(FIGURE_COND_VIEWS), 0), "key": key, "synset": synset, "object_id": object_id,
         "target_view": t, "cond_views": list(FIGURE_COND_VIEWS), "view_count": len(FIGURE_COND_VIEWS),
         "seed": seed + t}
        for t in range(0, NUM_VIEWS, FIGURE_TARGET_STRIDE)
    ]
    return {"split": split, "seed": seed, "view_count": 6, "source": FIGURE_SOURCE, "items": items}


def autoregressive(model, images: torch.Tensor, *, spec: SamplerSpec, start_view: int, stride: int,
                   seed: int, device: torch.device, out: Path, key: str) -> None:
    """Generate views start+stride, start+2*stride, ... each conditioned on all earlier ones.

    The conditioning set starts with one real view; every generated view joins it (paper Fig. 3).
    """
    cond = [images[start_view]]
    names = [f"gt:{start_view}"]
    steps = []
    for k, target in enumerate(range(start_view + stride, start_view + NUM_VIEWS, stride)):
        target %= NUM_VIEWS
        item = {"target_view": target, "cond_views": [start_view]}  # the first view is the reference
        batch = {"y_cond": torch.stack(cond)[None].to(device),
                 "view_count": torch.tensor([len(cond)], device=device),
                 "angle": target_angles([item], relative=model.relative).to(device),
                 "seeds": torch.tensor([seed + k])}
        if model.relative:
            batch["y_ref"] = images[start_view][None].to(device)
        image, _, _ = generate_batch(model, batch, spec, save_weights=False, weights_every=1)
        atomic_write_bytes(out / f"step_{k:02d}.png", encode_png(image[0]))
        atomic_write_bytes(out / f"gt_{k:02d}.png", encode_png(images[target]))
        steps.append({"step": k, "target_view": target, "file": f"step_{k:02d}.png",
                      "gt": f"gt_{k:02d}.png", "cond": list(names)})
        cond.append(image[0].float())
        names.append(f"gen:{target}")
    atomic_write_json(out / "sequence.json", {"key": key, "start_view": start_view, "steps": steps})


def sample_figures(*, checkpoint: str, shards: str, split: str, out: str, spec: SamplerSpec,
                   seed: int = 0, key: str | None = None, stride: int = 3, device: str = "auto",
                   experiment: str = "", weights: str = "auto") -> Path:
    check_options(spec)
    if stride < 1:
        raise ViewFusionError(f"--stride {stride}: must be at least 1")
    out_dir = Path(out)
    key = figure_object(shards, split, seed=seed, key=key)
    manifest = weights_manifest(key, split=split, seed=seed)
    manifest_file = out_dir / "weights" / "manifest.json"
    atomic_write_json(manifest_file, manifest)
    sample_chunk(checkpoint=checkpoint, manifest=str(manifest_file), shards=shards, out=str(out_dir / "weights"),
                 spec=spec, batch_size=len(manifest["items"]), device=device, save_weights=True,
                 weights_every=max(1, (spec.steps or 1000) // 50), experiment=experiment, weights=weights)
    write_ground_truth(manifest_file, shards)  # the weight figure shows the true targets and inputs
    dev = resolve_device(device)
    model, info = load_sampling_model(checkpoint, device=dev, weights=weights)
    images = load_objects(shards, split, keys={key})[key].images
    autoregressive(model, images, spec=spec, start_view=FIGURE_COND_VIEWS[0], stride=stride,
                   seed=seed, device=dev, out=out_dir / "autoregressive", key=key)
    done = out_dir / "done.json"
    atomic_write_json(done, {"experiment": experiment, "checkpoint_step": info.get("step"),
                             "weights": info["weights"], "weights_sha256": info["weights_sha256"],
                             "config_sha256": info["config_sha256"], "sampler": spec.name, "steps": spec.steps,
                             "eta": spec.eta, "spacing": spacing_of(spec.name, spec.spacing), "key": key})
    return done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="figure sample directory (weights/, autoregressive/)")
    parser.add_argument("--object", default=None, help="object key synset_objectid (default: drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stride", type=int, default=3, help="views between autoregressive targets")
    add_sampler_arguments(parser, SAMPLER_KINDS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiment", default="")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="auto: the EMA weights when the checkpoint has them, else the raw ones")


def run(args: argparse.Namespace) -> int:
    done = sample_figures(
        checkpoint=args.checkpoint, shards=args.shards, split=args.split, out=args.out,
        spec=spec_of(args), seed=args.seed, key=args.object,
        stride=args.stride, device=args.device, experiment=args.experiment, weights=args.weights,
    )
    print(f"figure samples complete: {done}")
    return 0
