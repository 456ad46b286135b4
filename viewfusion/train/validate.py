"""In-training validation (train.validate_every) and `viewfusion validate` for any checkpoint.

    viewfusion validate --checkpoint results/runs/tiny/checkpoints/best.pt \
        --shards results/shards/all [--out val.json] [--targets 16 --steps 10 ...]
    torchrun --standalone --nproc-per-node=2 -m viewfusion.cli validate --device cpu ...

Every train.validate_every steps `viewfusion train` measures the weights it would sample with
(the EMA weights when train.ema_decay is set, else the raw ones) on the val split, never test:

- held-out loss: `viewfusion.train.heldout` on train.validate_draws fixed draws (seed
  train.validate_seed; 1..data.max_views views as the loader draws them, the target never among
  them; SR3 levels): `heldout_loss` is the objective the model trains on (v-MSE for
  v-prediction, else eps-MSE), with its standard error, its eps-MSE and its four noise bands;
- samples: a fixed val manifest (`viewfusion.data.manifest.make_manifest`, seed
  train.validate_seed, train.validate_targets targets over up to as many objects, balanced over
  categories, train.validate_views views each, default data.max_views), DDIM with
  train.validate_steps steps and eta 0, each target's noise from its manifest seed. Images are
  rounded to 8 bits as `viewfusion sample` writes them; `psnr` and `ssim` (the official
  conventions of viewfusion.evaluate.metrics) are means over targets.

The draws and targets are split over the ranks in contiguous blocks; the per-draw losses are
gathered in draw order and PSNR/SSIM are summed with torchmetrics' MeanMetric (float64,
synchronised over the process group), so any number of ranks gives the same numbers (the U-Net
runs in calls of a fixed row batch: 8 rows on CPU, 64 on CUDA). Validation runs in fp32 without
autograd, inside a saved-and-restored copy of every RNG (torch CPU/CUDA, numpy, python): the
training's batches, noise and weights are those of a run without it.

The validation line of metrics.jsonl (docs/FORMATS.md) carries `metric`, `best` (whether this
one improved on the best so far) and `best_value` / `best_step`; when it improved, rank 0 writes
`checkpoints/best.pt` (a full checkpoint, atomically). Every checkpoint holds `"best": {"metric",
"value", "step", "settings"}`, so a resumed run compares against the best of the run it
continues; when the validation settings changed, the comparison starts afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from viewfusion.config import VALIDATE_METRICS, ExperimentConfig
from viewfusion.data import nmr
from viewfusion.errors import ViewFusionError
from viewfusion.train import distributed, heldout

SPLIT = "val"


def settings(cfg: ExperimentConfig) -> dict:
    """What decides the validation numbers of given weights (best.pt compares only equal ones)."""
    tc = cfg.train
    return {"split": SPLIT, "metric": tc.validate_metric, "seed": tc.validate_seed,
            "draws": tc.validate_draws, "draw_max_views": cfg.data.max_views,
            "targets": tc.validate_targets, "views": tc.validate_views or cfg.data.max_views,
            "sampler": "ddim", "steps": tc.validate_steps, "eta": 0.0}


def val_items(shards, *, targets: int, views: int, seed: int) -> list[dict]:
    """The fixed validation targets: a seeded val manifest's first `targets` items, one target
    per object while there are objects enough, balanced over categories."""
    from viewfusion.data.manifest import make_manifest

    keys = heldout.split_keys(shards, SPLIT)
    objects = min(targets, len(keys))
    per_object = -(-targets // objects)
    if per_object >= nmr.NUM_VIEWS:
        raise ViewFusionError(f"train.validate_targets {targets}: the val split of {shards} has {len(keys)} objects, "
                              f"at most {(nmr.NUM_VIEWS - 1) * len(keys)} targets")
    manifest = make_manifest(shards, split=SPLIT, view_count=views, seed=seed, max_objects=objects,
                             targets_per_object=per_object)
    return manifest["items"][:targets]


def block(items: list, rank: int, world_size: int) -> list:
    """The rank-th of world_size contiguous, near-equal blocks (viewfusion.evaluate.sample.chunk_items)."""
    from viewfusion.evaluate.sample import chunk_items

    return chunk_items(items, rank + 1, world_size)


@contextlib.contextmanager
def isolated_rng(device: torch.device):
    """Every global RNG (torch CPU and the device's CUDA, numpy, python) as it was on entry."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class Validator:
    """The fixed validation set of one config, this rank's block of it loaded (construction and
    `run` are collective: every rank calls them)."""

    def __init__(self, cfg: ExperimentConfig, d: distributed.Dist, shards, *, batch_size: int = 16):
        from viewfusion.data.reader import load_objects
        from viewfusion.data.shardmanifest import read_shard_manifest
        from viewfusion.fsutil import sha256_json

        self.cfg, self.d, self.batch_size = cfg, d, batch_size
        self.settings = settings(cfg)
        self.row_batch = 64 if d.device.type == "cuda" else 8
        shard_manifest = read_shard_manifest(shards)
        if SPLIT not in shard_manifest["splits"]:
            raise ViewFusionError(f"validation (train.validate_every) needs a {SPLIT} split; {shards} has "
                                  f"{', '.join(sorted(shard_manifest['splits']))}")
        size = shard_manifest["image_size"]
        if size != cfg.model.image_size:
            raise ViewFusionError(f"validation: {shards} holds {size} px images, "
                                  f"the model is {cfg.model.image_size} px")
        s = self.settings
        with isolated_rng(d.device):
            keys = heldout.split_keys(shards, SPLIT)
            draws = heldout.make_draws(keys, count=s["draws"], seed=s["seed"], max_views=s["draw_max_views"],
                                       n_timestep=cfg.diffusion.n_timestep)
            items = val_items(shards, targets=s["targets"], views=s["views"], seed=s["seed"])
        self.n_draws, self.n_targets = len(draws), len(items)
        self.draw_views = max(len(dr.cond_views) for dr in draws)  # one padding for every rank
        self.draws_sha256, self.manifest_sha256 = heldout.draws_sha256(draws), sha256_json(items)
        self.draws, self.items = block(draws, d.rank, d.world_size), block(items, d.rank, d.world_size)
        needed = {dr.key for dr in self.draws} | {it["key"] for it in self.items}
        self.objects = load_objects(shards, SPLIT, keys=sorted(needed)) if needed else {}

    def _image(self, key: str, view: int) -> torch.Tensor:
        return self.objects[key].images[view]

    def run(self, model, *, weights: str) -> dict:
        """The validation numbers of `model` (the same on every rank); RNGs untouched."""
        started = time.perf_counter()
        with isolated_rng(self.d.device):
            per_draw = heldout.evaluate(model, self.draws, self._image, batch_size=self.batch_size,
                                        row_batch=self.row_batch, n_views=self.draw_views)
            psnr, ssim = self._sample(model)
        gathered = distributed.all_gather_object(per_draw)
        per_draw = {name: [v for part in gathered for v in part[name]] for name in per_draw}
        summary = heldout.summarize(per_draw, n_timestep=model.num_timesteps, gammas=model.gammas,
                                    prediction=model.prediction)
        loss = summary[summary["loss"]]
        return {"event": "validation", "psnr": psnr, "ssim": ssim, "heldout_loss": loss["mean"],
                "heldout_loss_se": loss["se"], "heldout_loss_name": summary["loss"],
                "heldout_eps_mse": summary["eps_mse"]["mean"],
                "heldout_loss_bands": [b[summary["loss"]]["mean"] for b in summary["bands"]],
                "targets": self.n_targets, "draws": self.n_draws, "views": self.settings["views"],
                "sampler": "ddim", "steps": self.settings["steps"], "weights": weights,
                "row_batch": self.row_batch, "manifest_sha256": self.manifest_sha256,
                "draws_sha256": self.draws_sha256, "seconds": time.perf_counter() - started}

    @torch.no_grad()
    def _sample(self, model) -> tuple[float, float]:
        """Mean PSNR and SSIM of the DDIM samples over every rank's targets (torchmetrics)."""
        from torchmetrics import MeanMetric

        from viewfusion.evaluate.metrics import psnr, ssim
        from viewfusion.evaluate.targets import build_batch

        device = self.d.device
        # float64 sums (set after .to(), which would cast the inputs back to float32)
        means = {name: MeanMetric().to(device).set_dtype(torch.float64) for name in ("psnr", "ssim")}
        was_training, old_rows = model.training, model.row_batch
        model.eval()
        model.row_batch = self.row_batch
        try:
            if not self.items:  # more ranks than targets: this rank adds nothing, but syncs
                for metric in means.values():
                    metric.update(torch.zeros(0, dtype=torch.float64, device=device))
            for start in range(0, len(self.items), self.batch_size):
                part = self.items[start : start + self.batch_size]
                batch = build_batch(part, self.objects, relative=model.relative, device=device)
                images = model.generate(batch["y_cond"], batch["view_count"], batch["angle"], sampler="ddim",
                                        steps=self.settings["steps"], eta=0.0, seeds=batch["seeds"],
                                        y_ref=batch.get("y_ref"))
                pred = (images.double().clamp(0, 1) * 255).round() / 255  # the 8-bit PNG sample writes
                gt = torch.stack([self.objects[it["key"]].images[it["target_view"]] for it in part]).to(device)
                means["psnr"].update(psnr(pred, gt.double()))
                means["ssim"].update(ssim(pred, gt.double()))
        finally:
            model.row_batch = old_rows
            model.train(was_training)
        return tuple(float(means[name].compute()) for name in ("psnr", "ssim"))


def improves(value: float, best: dict | None, metric: str) -> bool:
    """Whether `value` of `metric` beats `best` (None: anything finite does)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best["value"] if VALIDATE_METRICS[metric] else value < best["value"]


def update_best(best: dict | None, row: dict, run_settings: dict, step: int) -> tuple[dict | None, bool]:
    """(the best after this validation row, whether the row improved on it)."""
    metric = run_settings["metric"]
    if best is not None and best.get("settings") != run_settings:
        best = None  # other validation settings: their numbers do not compare
    if not improves(row[metric], best, metric):
        return best, False
    return {"metric": metric, "value": float(row[metric]), "step": int(step), "settings": dict(run_settings)}, True


def resumed_best(best: dict | None, cfg: ExperimentConfig) -> dict | None:
    """The best a resumed run continues from: the checkpoint's, if made with these settings."""
    if best is None or best.get("settings") == settings(cfg):
        return best
    distributed.print0(f"validation settings changed since the best {best.get('metric')} "
                       f"({best.get('value')} at step {best.get('step')}): best.pt is compared afresh")
    return None


# ---------------------------------------------------------------- `viewfusion validate`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of ours")
    parser.add_argument("--shards", required=True, help="shard directory with a val split")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="auto: the EMA weights when the checkpoint has them (as training validates)")
    for flag, key in (("--draws", "validate_draws"), ("--targets", "validate_targets"),
                      ("--views", "validate_views"), ("--steps", "validate_steps"), ("--seed", "validate_seed")):
        parser.add_argument(flag, type=int, default=None, help=f"default: the checkpoint's train.{key}")
    parser.add_argument("--out", default=None, help="JSON file (rank 0, atomically); the row goes to stdout")


def run(args: argparse.Namespace) -> int:
    from viewfusion.config import from_dict, to_dict
    from viewfusion.evaluate.sample import load_sampling_model
    from viewfusion.fsutil import atomic_write_json, disk_errors
    from viewfusion.model.checkpoint import config_of, load

    ckpt = load(args.checkpoint)
    cfg = config_of(ckpt, source=str(args.checkpoint))
    changes = {key: getattr(args, flag) for flag, key in (("draws", "validate_draws"), ("targets", "validate_targets"),
                                                          ("views", "validate_views"), ("steps", "validate_steps"),
                                                          ("seed", "validate_seed"))
               if getattr(args, flag) is not None}
    if changes:
        raw = to_dict(cfg)
        raw["train"].update(changes)
        cfg = from_dict(raw, source=f"{args.checkpoint} with {' '.join(f'--{k[9:]} {v}' for k, v in changes.items())}")
    del ckpt
    d = distributed.setup(device=args.device)
    try:
        validator = Validator(cfg, d, args.shards)
        model, info = load_sampling_model(args.checkpoint, device=d.device, weights=args.weights,
                                          row_batch=validator.row_batch)
        row = validator.run(model, weights=info["weights"])
    finally:
        distributed.cleanup()
    row = {**row, "step": info["step"], "checkpoint": str(args.checkpoint), "weights_sha256": info["weights_sha256"],
           "settings": settings(cfg)}
    if d.is_main:
        if args.out:
            with disk_errors(args.out):
                atomic_write_json(Path(args.out), row)
        print(json.dumps(row))
    return 0
