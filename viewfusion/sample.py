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

from viewfusion.checkpoint import load_model
from viewfusion.data.loader import load_objects
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_bytes, atomic_write_json

SAMPLERS = ("ddpm", "ddim")
NUM_VIEWS = 24
VIEW_STEP = 2 * math.pi / NUM_VIEWS  # radians between neighbouring NMR views


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # "ddpm" (the paper's ancestral sampler) or "ddim"
    steps: int | None  # None: the full training schedule (ddpm-2000 for the paper)
    eta: float = 0.0


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


def _progress_path(out: Path, i: int, n: int) -> Path:
    return out / "chunks" / f"{i}-of-{n}.progress.json"


def _load_progress(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"seconds": 0.0, "targets": 0, "unet_evals": 0}


def sample_chunk(
    *, checkpoint: str, manifest: str, shards: str, out: str, chunk: str = "1/1",
    spec: SamplerSpec = SamplerSpec("ddim", 50), batch_size: int = 16, device: str = "auto",
    save_weights: bool = False, weights_every: int = 1, experiment: str = "",
) -> Path:
    """Generate chunk `i/N` of `manifest` into `out`; return the chunk's completion marker."""
    i, n = parse_chunk(chunk)
    out_dir = Path(out)
    marker = out_dir / "chunks" / f"{i}-of-{n}.json"
    man = read_manifest(manifest)
    items = chunk_items(man["items"], i, n)
    todo = [it for it in items if not item_done(out_dir, it["item"], weights=save_weights)]
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model, info = load_model(checkpoint, device=dev)
    progress_file = _progress_path(out_dir, i, n)
    progress = _load_progress(progress_file)
    if todo:
        objects = load_objects(shards, man["split"], keys={it["key"] for it in todo})
        missing = sorted({it["key"] for it in todo} - set(objects))
        if missing:
            raise ViewFusionError(f"{shards}: split {man['split']!r} lacks objects {missing[:5]} named in {manifest}; shard and manifest disagree")
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            batch = build_batch(part, objects, relative=model.relative, device=dev)
            tick = time.perf_counter()
            images, weights, steps = generate_batch(model, batch, spec, save_weights=save_weights, weights_every=weights_every)
            progress["seconds"] += time.perf_counter() - tick
            progress["targets"] += len(part)
            progress["unet_evals"] += int(batch["view_count"].sum()) * _steps_taken(model, spec)
            for row, it in enumerate(part):
                gt = objects[it["key"]].images[it["target_view"]]
                _save_item(out_dir, it, images[row], gt, None if weights is None else weights[:, row], steps)
            atomic_write_json(progress_file, progress)
    _write_marker(marker, items=items, i=i, n=n, spec=spec, progress=progress, checkpoint=checkpoint,
                  info=info, experiment=experiment, device=str(dev))
    return marker


def _steps_taken(model, spec: SamplerSpec) -> int:
    return spec.steps if spec.steps is not None else model.num_timesteps


def _write_marker(marker: Path, *, items, i, n, spec, progress, checkpoint, info, experiment, device) -> None:
    targets = max(progress["targets"], 1)
    atomic_write_json(marker, {
        "chunk": i, "of": n, "items": [it["item"] for it in items],
        "sampler": spec.name, "steps": spec.steps, "eta": spec.eta,
        "checkpoint": str(checkpoint), "checkpoint_step": info.get("step"),
        "experiment": experiment,
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


def run(args: argparse.Namespace) -> int:
    spec = SamplerSpec(args.sampler, args.steps, args.eta)
    marker = sample_chunk(
        checkpoint=args.checkpoint, manifest=args.manifest, shards=args.shards, out=args.out,
        chunk=args.chunk, spec=spec, batch_size=args.batch_size, device=args.device,
        save_weights=args.save_weights, weights_every=args.weights_every, experiment=args.experiment,
    )
    print(f"chunk complete: {marker}")
    return 0
