"""Chunked, resumable, deterministic sampling of an evaluation manifest.

    viewfusion sample --checkpoint results/runs/tiny/final.pt --shards results/shards/all \
        --manifest results/manifests/all/test-v3.json --chunk 2/4 \
        --sampler ddim --steps 50 --out results/samples/tiny/final/ddim-50/v3

Chunk i of N (1-based) takes the i-th contiguous block of the manifest's items. Every target
carries its own seed in the manifest and draws all of its noise from its own generator, so any
chunking and any batch size give byte-identical PNGs. Each PNG is written atomically, finished
items are skipped on restart, and `chunks/{i}-of-{N}.json` is written last: its presence means
the chunk is complete. Targets with different view counts share a batch (views padded, masked).
Output layout (viewfusion.evaluate.samplestore; docs/FORMATS.md, section Samples): a chunk's images are
one tar, `chunks/{i}-of-{N}.tar`; ground truth is written once per manifest by `viewfusion
ground-truth`, not here.

`--sampler nearest` is the trivial baseline the tables compare against: no network, each target
is the conditioning view nearest to it in azimuth, copied (it knows the poses; the model does not).
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viewfusion.bounded import load_json
from viewfusion.data.manifest import read_manifest
from viewfusion.data.reader import load_objects
from viewfusion.data.shardmanifest import data_sha256
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import pending, provenance, samplestore
from viewfusion.evaluate.samplestore import CHUNK_MARKER, ChunkStore
from viewfusion.evaluate.targets import build_batch, generate_batch, nearest_view_images
from viewfusion.fsutil import atomic_write_json, disk_errors, sha256_file, sha256_json
from viewfusion.model.checkpoint import (
    config_of,
    load,
    load_model,
    load_state,
    weights_sha256,
)
from viewfusion.model.device import resolve_device
from viewfusion.model.samplers import ALL_SAMPLERS, DEFAULT_SPACING, DEFAULT_STEPS, SPACINGS, SamplerSpec, spacing_of


def check_options(spec: SamplerSpec, *, batch_size: int = 1, weights_every: int = 1,
                  row_batch: int | None = None) -> None:
    """Flag values no sampler accepts, as one clear error before anything is loaded."""
    if spec.name not in ALL_SAMPLERS:
        raise ViewFusionError(f"--sampler {spec.name!r}: use one of {', '.join(ALL_SAMPLERS)}")
    if spec.steps is not None and spec.steps < 1:
        raise ViewFusionError(f"--steps {spec.steps}: need at least 1 sampling step")
    if not (math.isfinite(spec.eta) and 0.0 <= spec.eta <= 1.0):
        raise ViewFusionError(f"--eta {spec.eta}: DDIM eta must be in [0, 1] (0 deterministic, 1 ancestral)")
    try:
        spacing_of(spec.name, spec.spacing)
    except ValueError as err:
        raise ViewFusionError(f"--spacing {spec.spacing}: {err}") from None
    for flag, value in (("--batch-size", batch_size), ("--weights-every", weights_every),
                        ("--row-batch", 1 if row_batch is None else row_batch)):
        if value < 1:
            raise ViewFusionError(f"{flag} {value}: must be at least 1")


def _settled_steps(model, spec: SamplerSpec, checkpoint: str) -> tuple[int, int]:
    """(steps, U-Net calls per target and view) of `spec` on `model` (its schedule bounds them);
    they differ for Heun, whose 2nd-order corrections are extra calls."""
    try:
        calls = len(model.make_sampler(spec.name, steps=spec.steps, eta=spec.eta, spacing=spec.spacing).timesteps)
        steps = model.num_timesteps if spec.name == "ddpm" else spec.steps or DEFAULT_STEPS[spec.name]
        return steps, calls
    except ValueError as err:
        raise ViewFusionError(f"{spec.flags()} on {checkpoint}: "
                              f"{err}") from None


def load_sampling_model(checkpoint: str, *, device: torch.device, weights: str = "auto", row_batch: int | None = None):
    """(model in eval mode, info); auto prefers EMA weights, which sample better. info holds what
    the markers record: step, weights ("ema"/"raw"), row_batch, max_train_views, and the
    fingerprints weights_sha256 (of the weights loaded) and config_sha256.

    row_batch: U-Net rows per call (default 8 on CPU, 64 on CUDA), fixed so that images do not
    depend on the batch a target sits in; change it and the last bits of the images change."""
    model, cfg, ckpt = load_model(checkpoint, device=device, ema=weights == "ema")
    model.row_batch = row_batch or (64 if device.type == "cuda" else 8)
    use_ema = weights == "ema" or (weights == "auto" and ckpt.get("ema") is not None)
    if use_ema and weights == "auto":
        load_state(model, ckpt["ema"]["model"], source=f"{checkpoint} (EMA weights)")
    state = model.state_dict()
    bad = next((name for name, value in state.items()
                if value.is_floating_point() and not value.isfinite().all()), None)
    if bad is not None:
        raise ViewFusionError(f"{checkpoint}: {'EMA' if use_ema else 'model'} weight {bad} holds NaN or inf; "
                              "sample an earlier checkpoint (training diverged or the file is damaged)")
    return model, {**_identity(ckpt, cfg), "weights": "ema" if use_ema else "raw", "row_batch": model.row_batch,
                   "weights_sha256": weights_sha256(state)}


def checkpoint_info(checkpoint: str) -> dict:
    """What the markers record of a checkpoint the copy baseline does not run (its step and the
    most views it trained with, so that its rows sit beside the model's in the tables)."""
    ckpt = load(checkpoint)
    return {**_identity(ckpt, config_of(ckpt)), "weights": "none", "row_batch": None,
            "weights_sha256": weights_sha256(ckpt["model"])}


def _identity(ckpt: dict, cfg) -> dict:
    # The config as the checkpoint stores it, not re-resolved: a code version that adds a config
    # key (with its default) must not change the fingerprint of an existing checkpoint.
    return {"step": ckpt.get("step"), "max_train_views": cfg.data.max_views,
            "config_sha256": sha256_json(ckpt["config"])}


def parse_chunk(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ViewFusionError(f"--chunk {text!r}: expected i/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise ViewFusionError(f"--chunk {text!r}: need 1 <= i <= N")
    if n > samplestore.MAX_CHUNKS:
        raise ViewFusionError(f"--chunk {text!r}: N must be at most {samplestore.MAX_CHUNKS:,}")
    return i, n


def chunk_items(items: list[dict], i: int, n: int) -> list[dict]:
    """The i-th (1-based) of n contiguous, near-equal blocks: contiguous keeps objects together."""
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return items[bounds[i - 1] : bounds[i]]


def encode_png(image: torch.Tensor, made_by: str | None = None) -> bytes:
    """(3,H,W) float in [0,1] -> 8-bit PNG bytes (the paper scored 8-bit PNGs), tagged with
    `made_by` (viewfusion.evaluate.provenance) when given."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    info = None if made_by is None else provenance.png_info(made_by)
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


def item_state(store: ChunkStore, it: dict, fp: str, *, weights: bool) -> str:
    """"done" when every file of the item carries the current `made_by`, "stale" when some file
    exists but was made otherwise (another checkpoint, sampler or manifest entry), else "todo"."""
    tag = provenance.made_by(fp, it)
    names = item_members(it, weights=weights)
    if all(store.find(name, tag) is not None for name in names):
        return "done"
    return "stale" if any(store.exists(name) for name in names) else "todo"


def item_members(it: dict, *, weights: bool) -> list[str]:
    """The pack members of one item: its image, and its view weights when recorded."""
    return [it["item"] + samplestore.IMAGE] + ([it["item"] + samplestore.WEIGHTS] if weights else [])


def _save_item(store: ChunkStore, it: dict, made_by: str, image: torch.Tensor, weights=None, steps=None) -> None:
    if weights is not None:
        n = len(it["cond_views"])
        w = weights[:, :n].float()  # (S, N, H, W) of this target, padding dropped
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            steps=np.asarray(steps),
            mean=w.mean(dim=(-1, -2)).numpy(),
            final=w[-1].half().numpy(),
            cond_views=np.asarray(it["cond_views"]),
            made_by=np.asarray(made_by),
        )
        store.put(it["item"] + samplestore.WEIGHTS, buffer.getvalue())
    store.put(it["item"] + samplestore.IMAGE, encode_png(image, made_by))


def _progress_path(out: Path, stem: str) -> Path:
    return out / "chunks" / f"{stem}.progress.json"


def _load_progress(path: Path, fp: str) -> dict:
    """Timing of the items made under fingerprint `fp` so far (a restart keeps counting)."""
    if path.exists():
        try:
            progress = load_json(path)
        except (OSError, ValueError, ViewFusionError):
            progress = None  # unreadable: counting starts again
        if isinstance(progress, dict) and progress.get("fingerprint") == fp:
            return progress
    return {"fingerprint": fp, "seconds": 0.0, "targets": 0, "unet_evals": 0}


def sample_chunk(
    *, checkpoint: str, manifest: str, shards: str, out: str, chunk: str = "1/1",
    spec: SamplerSpec = SamplerSpec("ddim", 50), batch_size: int = 16, device: str = "auto",
    save_weights: bool = False, weights_every: int = 1, experiment: str = "", weights: str = "auto",
    row_batch: int | None = None,
) -> Path:
    """Generate chunk `i/N` of `manifest` into `out`; return the chunk's completion marker.

    Items whose files carry this run's fingerprint (viewfusion.evaluate.provenance) are kept; items made
    by other settings are regenerated, never relabelled. New items go to the chunk's pending
    folder; the chunk's pack (viewfusion.evaluate.samplestore) is written from them, then the marker."""
    i, n = parse_chunk(chunk)
    check_options(spec, batch_size=batch_size, weights_every=weights_every, row_batch=row_batch)
    if spec.name == "nearest" and save_weights:
        raise ViewFusionError("--sampler nearest copies a view and has no view weights; drop --save-weights")
    out_dir, stem = Path(out), samplestore.chunk_stem(i, n)
    marker = samplestore.marker_path(out_dir, stem)
    man = read_manifest(manifest)
    items = chunk_items(man["items"], i, n)
    dev = resolve_device(device)
    model, info, settings, calls = _settle(checkpoint, spec, dev, weights=weights, row_batch=row_batch,
                                           data=data_sha256(shards, man["split"]))
    fp = provenance.fingerprint(settings)
    pending.clean_pending(out_dir)  # what runs that died beside complete chunks left there
    marker.unlink(missing_ok=True)  # the chunk is incomplete until this run says otherwise
    _drop_other_markers(out_dir / "chunks", fp)
    store = ChunkStore(out_dir, stem)
    states = {it["item"]: item_state(store, it, fp, weights=save_weights) for it in items}
    stale = sum(state == "stale" for state in states.values())
    if stale:
        print(f"{out_dir}: regenerating {stale} items made by other settings (checkpoint, sampler or manifest)")
    progress_file = _progress_path(out_dir, stem)
    progress = _load_progress(progress_file, fp)
    todo = [it for it in items if states[it["item"]] != "done"]
    if todo:
        objects = _objects(shards, man["split"], todo, manifest)
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            tick = time.perf_counter()
            images, view_weights, weight_steps = _images(model, part, objects, spec, dev, save_weights, weights_every)
            _check_finite(images, part, checkpoint, spec)
            progress["seconds"] += time.perf_counter() - tick
            progress["targets"] += len(part)
            progress["unet_evals"] += sum(len(it["cond_views"]) for it in part) * calls
            for row, it in enumerate(part):
                _save_item(store, it, provenance.made_by(fp, it), images[row],
                           None if view_weights is None else view_weights[:, row], weight_steps)
            atomic_write_json(progress_file, progress)
    store.finish([(name, provenance.made_by(fp, it)) for it in items
                  for name in item_members(it, weights=save_weights)])
    _write_marker(marker, items=items, i=i, n=n, progress=progress, info=info, settings=settings, fp=fp,
                  extra={"checkpoint": str(checkpoint), "experiment": experiment, "device": str(dev),
                         "manifest": str(manifest), "manifest_sha256": sha256_file(manifest)})
    pending.clean_pending(out_dir)  # now packed: this run's items, and a concurrent run's copies
    return marker


def _settle(checkpoint: str, spec: SamplerSpec, dev: torch.device, *, weights: str, row_batch: int | None,
            data: str):
    """(model or None for the copy baseline, checkpoint info, fingerprint settings, U-Net calls
    per target and view)."""
    if spec.name == "nearest":
        model, info, steps, calls = None, checkpoint_info(checkpoint), 0, 0
    else:
        model, info = load_sampling_model(checkpoint, device=dev, weights=weights, row_batch=row_batch)
        steps, calls = _settled_steps(model, spec, checkpoint)
    settings = provenance.sample_settings(
        sampler=spec.name, steps=steps, eta=spec.eta if model else 0.0, spacing=spec.spacing,
        row_batch=info["row_batch"],
        weights=info["weights"], weights_sha256=info["weights_sha256"], config_sha256=info["config_sha256"],
        data_sha256=data)
    return model, info, settings, calls


def _drop_other_markers(chunks: Path, fp: str) -> None:
    """Markers (and progress) of other settings in this folder describe images this run
    replaces: left, they would mark a chunk complete under the old label (e.g. after a change of
    evaluation.chunks). Chunks of the same settings, running beside this one, are kept."""
    if not chunks.is_dir():
        return
    for path in chunks.glob("*.json"):
        if not CHUNK_MARKER.match(path.name):
            continue
        try:
            other = load_json(path).get("fingerprint")
        except (OSError, ValueError, AttributeError, ViewFusionError):
            other = None
        if other != fp:
            path.unlink(missing_ok=True)
            path.with_name(path.name.replace(".json", ".progress.json")).unlink(missing_ok=True)


def _objects(shards: str, split: str, todo: list[dict], manifest: str) -> dict:
    objects = load_objects(shards, split, keys={it["key"] for it in todo})
    missing = sorted({it["key"] for it in todo} - set(objects))
    if missing:
        raise ViewFusionError(f"{shards}: split {split!r} lacks objects {missing[:5]} named in {manifest}; "
                              "shard and manifest disagree")
    return objects


def _images(model, part, objects, spec, dev, save_weights, weights_every):
    """(images, view weights or None, weight steps or None) of one batch of targets."""
    if model is None:
        return nearest_view_images(part, objects), None, None
    batch = build_batch(part, objects, relative=model.relative, device=dev)
    return generate_batch(model, batch, spec, save_weights=save_weights, weights_every=weights_every)


def _check_finite(images: torch.Tensor, part: list[dict], checkpoint: str, spec: SamplerSpec) -> None:
    """NaN/inf would be written as black pixels and scored as a (bad) image: refuse instead."""
    bad = [it["item"] for it, ok in zip(part, images.flatten(1).isfinite().all(1).tolist()) if not ok]
    if bad:
        raise ViewFusionError(f"{checkpoint} with {spec.flags()} gave "
                              f"NaN/inf pixels for {len(bad)} items (first {bad[0]}); nothing of them was written")


def _write_marker(marker: Path, *, items, i, n, progress, info, settings, fp, extra) -> None:
    done = progress["targets"]
    atomic_write_json(marker, {
        "chunk": i, "of": n, "items": [it["item"] for it in items],
        "sampler": settings["sampler"], "steps": settings["steps"], "eta": settings["eta"],
        "spacing": spacing_of(settings["sampler"], settings.get("spacing")),
        "checkpoint_step": info.get("step"), "weights": info["weights"], "row_batch": info["row_batch"],
        "max_train_views": info.get("max_train_views"), "weights_sha256": info["weights_sha256"],
        "config_sha256": info["config_sha256"], "data_sha256": settings["data_sha256"],
        "seconds_per_target": progress["seconds"] / done if done else math.nan,
        "unet_evals_per_target": progress["unet_evals"] / done if done else math.nan,
        "settings": settings, "fingerprint": fp, **extra,
    })


def add_sampler_arguments(parser: argparse.ArgumentParser, choices) -> None:
    """--sampler, --steps, --eta, --spacing: the flags of a SamplerSpec (`spec_of(args)`)."""
    parser.add_argument("--sampler", choices=choices, default="ddim")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampling steps (ddpm: the training schedule; defaults {DEFAULT_STEPS})")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic; DDIM only)")
    parser.add_argument("--spacing", choices=SPACINGS, default=None,
                        help=f"where the steps sit on the trained schedule (default per sampler: {DEFAULT_SPACING}); "
                             "karras and lambda put most of them at low noise")


def spec_of(args: argparse.Namespace) -> SamplerSpec:
    return SamplerSpec(args.sampler, args.steps, args.eta, args.spacing)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or the official best_model_all.pt")
    parser.add_argument("--manifest", required=True, help="evaluation manifest (viewfusion data manifest)")
    parser.add_argument("--shards", required=True, help="shard directory holding the manifest's split")
    parser.add_argument("--out", required=True, help="sample directory (chunks/: packs and markers)")
    parser.add_argument("--chunk", default="1/1", help="i/N: the i-th of N contiguous blocks (1-based)")
    add_sampler_arguments(parser, ALL_SAMPLERS)
    parser.add_argument("--batch-size", type=int, default=16, help="targets per batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--save-weights", action="store_true", help="also save the per-step view weights")
    parser.add_argument("--weights-every", type=int, default=1, help="record weights every k steps")
    parser.add_argument("--experiment", default="", help="experiment name recorded with the results")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="auto: the EMA weights when the checkpoint has them, else the raw ones")
    parser.add_argument("--row-batch", type=int, default=None,
                        help="U-Net rows per call (default 8 on CPU, 64 on CUDA); images are identical "
                             "for any --chunk and --batch-size at one row batch")


def run(args: argparse.Namespace) -> int:
    spec = spec_of(args)
    with disk_errors(args.out):
        marker = sample_chunk(
            checkpoint=args.checkpoint, manifest=args.manifest, shards=args.shards, out=args.out,
            chunk=args.chunk, spec=spec, batch_size=args.batch_size, device=args.device,
            save_weights=args.save_weights, weights_every=args.weights_every, experiment=args.experiment,
            weights=args.weights, row_batch=args.row_batch,
        )
    print(f"chunk complete: {marker}")
    return 0


