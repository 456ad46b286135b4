"""Chunked, resumable, deterministic sampling of an evaluation manifest.

    viewfusion sample --checkpoint results/runs/tiny/final.pt --shards results/shards/all \
        --manifest results/manifests/all/test_v3.json --chunk 2/4 \
        --sampler ddim --steps 50 --out results/samples/tiny/final/ddim-50/v3

Chunk i of N (1-based) takes the i-th contiguous block of the manifest's items. Every target
carries its own seed in the manifest and draws all of its noise from its own generator, so any
chunking and any batch size give byte-identical PNGs. Each PNG is written atomically, finished
items are skipped on restart, and `chunks/{i}-of-{N}.json` is written last: its presence means
the chunk is complete. Targets with different view counts share a batch (views padded, masked).
Output layout: docs/FORMATS.md, section Samples.

`--sampler nearest` is the trivial baseline the tables compare against: no network, each target
is the conditioning view nearest to it in azimuth, copied (it knows the poses; the model does not).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viewfusion.checkpoint import config_of, load, load_model
from viewfusion.data.loader import load_objects
from viewfusion.data.nmr import NUM_VIEWS, VIEW_STEP, view_distance
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_bytes, atomic_write_json

MODEL_SAMPLERS = ("ddpm", "ddim")
SAMPLERS = (*MODEL_SAMPLERS, "nearest")  # nearest: the copy baseline, no network


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # "ddpm" (the paper's ancestral sampler), "ddim" or "nearest" (the copy baseline)
    steps: int | None  # None: the full training schedule (ddpm-2000 for the paper)
    eta: float = 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_sampling_model(checkpoint: str, *, device: torch.device, weights: str = "auto", row_batch: int | None = None):
    """(model in eval mode, {"step", "weights", "row_batch", "max_train_views"}); auto prefers EMA
    weights, which sample better.

    row_batch: U-Net rows per call (default 8 on CPU, 64 on CUDA), fixed so that images do not
    depend on the batch a target sits in; change it and the last bits of the images change."""
    model, cfg, ckpt = load_model(checkpoint, device=device, ema=weights == "ema")
    model.row_batch = row_batch or (64 if device.type == "cuda" else 8)
    use_ema = weights == "ema" or (weights == "auto" and ckpt.get("ema") is not None)
    if use_ema and weights == "auto":
        model.load_state_dict(ckpt["ema"]["model"], strict=True)
    return model, {"step": ckpt.get("step"), "weights": "ema" if use_ema else "raw", "row_batch": model.row_batch,
                   "max_train_views": cfg.data.max_views}


def checkpoint_info(checkpoint: str) -> dict:
    """What the markers record of a checkpoint the copy baseline does not run (its step and the
    most views it trained with, so that its rows sit beside the model's in the tables)."""
    ckpt = load(checkpoint)
    return {"step": ckpt.get("step"), "weights": "none", "max_train_views": config_of(ckpt).data.max_views}


def parse_chunk(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ViewFusionError(f"--chunk {text!r}: expected i/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise ViewFusionError(f"--chunk {text!r}: need 1 <= i <= N")
    return i, n


def chunk_items(items: list[dict], i: int, n: int) -> list[dict]:
    """The i-th (1-based) of n contiguous, near-equal blocks: contiguous keeps objects together."""
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return items[bounds[i - 1] : bounds[i]]


def read_manifest(path: str | Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
        items = manifest["items"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ViewFusionError(f"manifest {path}: unreadable ({err}); regenerate it with `viewfusion data manifest`") from None
    names = [it["item"] for it in items]
    if len(set(names)) != len(names):
        raise ViewFusionError(f"manifest {path}: duplicate item names; regenerate it")
    return manifest


def encode_png(image: torch.Tensor) -> bytes:
    """(3,H,W) float in [0,1] -> 8-bit PNG bytes (the paper scored 8-bit PNGs)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def item_done(out: Path, item: str, *, weights: bool) -> bool:
    files = [out / "images" / f"{item}.png", out / "gt" / f"{item}.png"]
    if weights:
        files.append(out / "weights" / f"{item}.npz")
    return all(f.exists() for f in files)


def build_batch(items: list[dict], objects: dict, *, relative: bool, device: torch.device) -> dict:
    """Stack targets with possibly different view counts; padding views are zeros (masked)."""
    n_max = max(len(it["cond_views"]) for it in items)
    first = objects[items[0]["key"]].images
    y_cond = torch.zeros(len(items), n_max, *first.shape[1:])
    for row, it in enumerate(items):
        views = objects[it["key"]].images
        y_cond[row, : len(it["cond_views"])] = views[it["cond_views"]]
    target = torch.tensor([it["target_view"] for it in items])
    batch = {
        "y_cond": y_cond.to(device),
        "view_count": torch.tensor([len(it["cond_views"]) for it in items], device=device),
        "seeds": torch.tensor([int(it["seed"]) for it in items]),
    }
    if relative:
        # The relative variant conditions on the angle between target and reference view (the
        # first conditioning view), wrapped to [0, 2*pi) as the loader does in training.
        ref = torch.tensor([it["cond_views"][0] for it in items])
        batch["y_ref"] = torch.stack([objects[it["key"]].images[it["cond_views"][0]] for it in items]).to(device)
        batch["angle"] = (((target - ref) % NUM_VIEWS) * VIEW_STEP).float().to(device)
    else:
        batch["angle"] = (target * VIEW_STEP).float().to(device)
    return batch


def _save_item(out: Path, it: dict, image: torch.Tensor, gt: torch.Tensor, weights=None, steps=None) -> None:
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
        )
        atomic_write_bytes(out / "weights" / f"{it['item']}.npz", buffer.getvalue())
    atomic_write_bytes(out / "gt" / f"{it['item']}.png", encode_png(gt))
    atomic_write_bytes(out / "images" / f"{it['item']}.png", encode_png(image))  # last: marks done


def generate_batch(model, batch: dict, spec: SamplerSpec, *, save_weights: bool, weights_every: int):
    kwargs = dict(sampler=spec.name, steps=spec.steps, eta=spec.eta, seeds=batch["seeds"])
    if "y_ref" in batch:
        kwargs["y_ref"] = batch["y_ref"]
    with torch.inference_mode():
        result = model.generate(
            batch["y_cond"], batch["view_count"], batch["angle"],
            return_weights=save_weights, weights_every=weights_every, **kwargs,
        )
    if save_weights:
        return result.images.cpu(), result.weights.cpu(), result.weight_steps
    return result.cpu(), None, None


def nearest_view_images(items: list[dict], objects: dict) -> torch.Tensor:
    """(B,3,H,W): per target, the conditioning view at the smallest circular azimuth distance
    (ties: the first listed, so the result is deterministic)."""
    picks = [min(it["cond_views"], key=lambda v, t=it["target_view"]: view_distance(v, t)) for it in items]
    return torch.stack([objects[it["key"]].images[v] for it, v in zip(items, picks)])


def _progress_path(out: Path, i: int, n: int) -> Path:
    return out / "chunks" / f"{i}-of-{n}.progress.json"


def _load_progress(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"seconds": 0.0, "targets": 0, "unet_evals": 0}


def sample_chunk(
    *, checkpoint: str, manifest: str, shards: str, out: str, chunk: str = "1/1",
    spec: SamplerSpec = SamplerSpec("ddim", 50), batch_size: int = 16, device: str = "auto",
    save_weights: bool = False, weights_every: int = 1, experiment: str = "", weights: str = "auto",
    row_batch: int | None = None,
) -> Path:
    """Generate chunk `i/N` of `manifest` into `out`; return the chunk's completion marker."""
    i, n = parse_chunk(chunk)
    if spec.name == "nearest" and save_weights:
        raise ViewFusionError("--sampler nearest copies a view and has no view weights; drop --save-weights")
    out_dir = Path(out)
    marker = out_dir / "chunks" / f"{i}-of-{n}.json"
    man = read_manifest(manifest)
    items = chunk_items(man["items"], i, n)
    todo = [it for it in items if not item_done(out_dir, it["item"], weights=save_weights)]
    dev = resolve_device(device)
    if spec.name == "nearest":
        model, info = None, checkpoint_info(checkpoint)
    else:
        model, info = load_sampling_model(checkpoint, device=dev, weights=weights, row_batch=row_batch)
    progress_file = _progress_path(out_dir, i, n)
    progress = _load_progress(progress_file)
    if todo:
        objects = load_objects(shards, man["split"], keys={it["key"] for it in todo})
        missing = sorted({it["key"] for it in todo} - set(objects))
        if missing:
            raise ViewFusionError(f"{shards}: split {man['split']!r} lacks objects {missing[:5]} named in {manifest}; shard and manifest disagree")
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            batch = None if model is None else build_batch(part, objects, relative=model.relative, device=dev)
            tick = time.perf_counter()
            if batch is None:
                images, view_weights, steps = nearest_view_images(part, objects), None, None
            else:
                images, view_weights, steps = generate_batch(model, batch, spec, save_weights=save_weights, weights_every=weights_every)
            progress["seconds"] += time.perf_counter() - tick
            progress["targets"] += len(part)
            progress["unet_evals"] += sum(len(it["cond_views"]) for it in part) * _steps_taken(model, spec)
            for row, it in enumerate(part):
                gt = objects[it["key"]].images[it["target_view"]]
                _save_item(out_dir, it, images[row], gt, None if view_weights is None else view_weights[:, row], steps)
            atomic_write_json(progress_file, progress)
    _write_marker(marker, items=items, i=i, n=n, spec=spec, steps_taken=_steps_taken(model, spec), progress=progress, checkpoint=checkpoint,
                  info=info, experiment=experiment, device=str(dev))
    return marker


def _steps_taken(model, spec: SamplerSpec) -> int:
    if model is None:
        return 0
    return spec.steps if spec.steps is not None else model.num_timesteps


def _write_marker(marker: Path, *, items, i, n, spec, steps_taken, progress, checkpoint, info, experiment, device) -> None:
    targets = max(progress["targets"], 1)
    atomic_write_json(marker, {
        "chunk": i, "of": n, "items": [it["item"] for it in items],
        "sampler": spec.name, "steps": steps_taken, "eta": spec.eta,
        "checkpoint": str(checkpoint), "checkpoint_step": info.get("step"), "weights": info["weights"],
        "experiment": experiment, "row_batch": info.get("row_batch"), "max_train_views": info.get("max_train_views"),
        "seconds_per_target": progress["seconds"] / targets if progress["targets"] else math.nan,
        "unet_evals_per_target": progress["unet_evals"] / targets if progress["targets"] else math.nan,
        "device": device,
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or the official best_model_all.pt")
    parser.add_argument("--manifest", required=True, help="evaluation manifest (viewfusion data manifest)")
    parser.add_argument("--shards", required=True, help="shard directory holding the manifest's split")
    parser.add_argument("--out", required=True, help="sample directory (images/, gt/, chunks/)")
    parser.add_argument("--chunk", default="1/1", help="i/N: the i-th of N contiguous blocks (1-based)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (ddpm default: the training schedule)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
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
    spec = SamplerSpec(args.sampler, args.steps, args.eta)
    marker = sample_chunk(
        checkpoint=args.checkpoint, manifest=args.manifest, shards=args.shards, out=args.out,
        chunk=args.chunk, spec=spec, batch_size=args.batch_size, device=args.device,
        save_weights=args.save_weights, weights_every=args.weights_every, experiment=args.experiment,
        weights=args.weights, row_batch=args.row_batch,
    )
    print(f"chunk complete: {marker}")
    return 0


# --- inputs of the paper's Figure 2 (view weights) and Figure 3 (autoregressive generation) ---

FIGURE_COND_VIEWS = (0, 4, 8, 12, 16, 20)  # six inputs spread around the object, as in Fig. 2
FIGURE_TARGET_STRIDE = 2  # targets every 30 degrees: the weights shift smoothly enough to follow


def figure_object(shards: str, split: str, *, seed: int, key: str | None) -> str:
    """The object the figures show: `key`, or one drawn with `seed` from the split."""
    manifest_file = Path(shards) / "manifest.json"
    objects = json.loads(manifest_file.read_text())["splits"][split]["objects"]
    if key is not None:
        if key not in objects:
            raise ViewFusionError(f"--object {key!r} is not in split {split!r} of {manifest_file}")
        return key
    return objects[np.random.default_rng(seed).integers(len(objects))]


def weights_manifest(key: str, *, split: str, seed: int) -> dict:
    synset, object_id = key.split("_", 1)
    items = [
        {"item": f"{key}-t{t:02d}-v6-0", "key": key, "synset": synset, "object_id": object_id,
         "target_view": t, "cond_views": list(FIGURE_COND_VIEWS), "view_count": 6, "seed": seed + t}
        for t in range(0, NUM_VIEWS, FIGURE_TARGET_STRIDE)
    ]
    return {"split": split, "seed": seed, "view_count": 6, "source": "figure", "items": items}


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
        batch = {"y_cond": torch.stack(cond)[None].to(device),
                 "view_count": torch.tensor([len(cond)], device=device),
                 "angle": torch.tensor([target * VIEW_STEP], device=device, dtype=torch.float32),
                 "seeds": torch.tensor([seed + k])}
        if model.relative:
            batch["y_ref"] = images[start_view][None].to(device)
            batch["angle"] = torch.tensor([((target - start_view) % NUM_VIEWS) * VIEW_STEP], device=device)
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
    out_dir = Path(out)
    key = figure_object(shards, split, seed=seed, key=key)
    manifest = weights_manifest(key, split=split, seed=seed)
    manifest_file = out_dir / "weights" / "manifest.json"
    atomic_write_json(manifest_file, manifest)
    sample_chunk(checkpoint=checkpoint, manifest=str(manifest_file), shards=shards, out=str(out_dir / "weights"),
                 spec=spec, batch_size=len(manifest["items"]), device=device, save_weights=True,
                 weights_every=max(1, (spec.steps or 1000) // 50), experiment=experiment, weights=weights)
    dev = resolve_device(device)
    model, info = load_sampling_model(checkpoint, device=dev, weights=weights)
    images = load_objects(shards, split, keys={key})[key].images
    autoregressive(model, images, spec=spec, start_view=FIGURE_COND_VIEWS[0], stride=stride,
                   seed=seed, device=dev, out=out_dir / "autoregressive", key=key)
    done = out_dir / "done.json"
    atomic_write_json(done, {"experiment": experiment, "checkpoint_step": info.get("step"),
                             "sampler": spec.name, "steps": spec.steps, "key": key})
    return done


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="figure sample directory (weights/, autoregressive/)")
    parser.add_argument("--object", default=None, help="object key synset_objectid (default: drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stride", type=int, default=3, help="views between autoregressive targets")
    parser.add_argument("--sampler", choices=MODEL_SAMPLERS, default="ddim")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiment", default="")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="auto: the EMA weights when the checkpoint has them, else the raw ones")


def run_figures(args: argparse.Namespace) -> int:
    done = sample_figures(
        checkpoint=args.checkpoint, shards=args.shards, split=args.split, out=args.out,
        spec=SamplerSpec(args.sampler, args.steps, args.eta), seed=args.seed, key=args.object,
        stride=args.stride, device=args.device, experiment=args.experiment, weights=args.weights,
    )
    print(f"figure samples complete: {done}")
    return 0
