"""`viewfusion heldout`: the training objective on fixed, seeded held-out draws.

    viewfusion heldout --checkpoint results/runs/tiny/checkpoints/step_00000500.pt \
        --shards results/shards/all --split test --draws 512 --seed 0 [--out heldout.json]

A draw is one training example made from a split the model did not train on: an object of
`--split`, a target view, its conditioning views, a noise level and a noise tensor. Draw i
takes all of them from generators seeded by (`--seed`, i) only, so every checkpoint (and every
`--batch-size`, device row batch aside) sees identical draws, and two checkpoints' numbers are
paired draw by draw:

- object: uniform over the split's objects (`numpy.random.default_rng([seed, i, 0])`, which
  then draws the level and the noise seed);
- views (`default_rng([seed, i, 1])`): the training loader's `select_views`: a permutation of
  the 24 views, the first the target, the next 1..`--max-views` (default: the checkpoint's
  data.max_views, uniform as in training) condition it, or exactly `--views` of them. The
  target is never among its views unless `--shuffle-prob` / `--self-view-prob` (both 0 here,
  the training values are data.shuffle_prob / data.self_view_prob) say so. A fixed `--views`
  takes the first views of the same permutation, so draws of --views 1 and 3 are nested;
- noise level: training's SR3 level, t uniform in 1..T-1 and gamma uniform between gamma_{t-1}
  and gamma_t (`--timestep T` fixes gamma = gamma_T, the level sampling conditions on);
- noise: `torch.randn` of a CPU generator seeded by the draw's noise seed.

Reported per draw and summarised (mean, standard error = sample std / sqrt(n), n):
`eps_mse` (MSE of the noise the composed output implies, the paper's objective), `v_mse` (only
for v-prediction models: the loss they train on), `x0_psnr` (PSNR of the one-step x0 estimate,
clamped to [0, 1], against the target) and `loss` (the name of the trained objective). Bands:
four quarters of the timestep range, band k holding t in [1 + k(T-1)/4, 1 + (k+1)(T-1)/4)
(integer bounds in the output, with their gammas); with `--timestep` one band holds all.

Deterministic: the U-Net runs in calls of exactly `--row-batch` rows (viewfusion.evaluate.sample's
default: 8 on CPU, 64 on CUDA) and every batch pads its views to the most any draw has, so a
draw's numbers do not depend on `--batch-size`; sums run in float64 in draw order. Weights:
the EMA weights when the checkpoint has them (`--weights auto`, as sampling). The JSON
(docs/FORMATS.md, "Held-out loss") is written atomically and holds no timings, so two runs
give identical bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from viewfusion.config import MAX_DRAWS
from viewfusion.data import nmr
from viewfusion.errors import ViewFusionError

FORMAT = "viewfusion-heldout"
FORMAT_VERSION = 1
BANDS = 4
METRICS = ("eps_mse", "v_mse", "x0_psnr")


@dataclass(frozen=True)
class Draw:
    index: int
    key: str
    target_view: int
    cond_views: tuple[int, ...]
    t: int  # the timestep whose interval holds the level (the level itself with --timestep)
    u: float | None  # position of gamma between gamma_{t-1} and gamma_t; None: gamma = gamma_t
    noise_seed: int

    def as_dict(self) -> dict:
        return {"index": self.index, "key": self.key, "target_view": self.target_view,
                "cond_views": list(self.cond_views), "t": self.t, "u": self.u, "noise_seed": self.noise_seed}


def check_settings(*, draws: int, seed: int, max_views: int, views: int | None, shuffle_prob: float,
                   self_view_prob: float, n_timestep: int, timestep: int | None, batch_size: int = 1) -> None:
    """Flag values that make no draws, as one-line errors."""
    if not 1 <= draws <= MAX_DRAWS:
        raise ViewFusionError(f"--draws {draws}: must be in 1..{MAX_DRAWS:,}")
    if not 0 <= seed <= nmr.MAX_SEED:
        raise ViewFusionError(f"--seed {seed}: must be in 0..2^63-1")
    if batch_size < 1:
        raise ViewFusionError(f"--batch-size {batch_size}: must be at least 1")
    if not 1 <= max_views < nmr.NUM_VIEWS:
        raise ViewFusionError(f"--max-views {max_views}: must be in 1..{nmr.NUM_VIEWS - 1}")
    if views is not None and not 1 <= views < nmr.NUM_VIEWS:
        raise ViewFusionError(f"--views {views}: must be in 1..{nmr.NUM_VIEWS - 1}")
    for flag, p in (("--shuffle-prob", shuffle_prob), ("--self-view-prob", self_view_prob)):
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ViewFusionError(f"{flag} {p}: must be a probability in [0, 1]")
    if timestep is not None and not 0 <= timestep < n_timestep:
        raise ViewFusionError(f"--timestep {timestep}: the model's schedule has timesteps 0..{n_timestep - 1}")


def make_draws(keys: list[str], *, count: int, seed: int, max_views: int, views: int | None = None,
               shuffle_prob: float = 0.0, self_view_prob: float = 0.0, n_timestep: int,
               timestep: int | None = None) -> list[Draw]:
    """The `count` draws of `seed` over the objects `keys` (see the module docstring)."""
    from viewfusion.data.loader import select_views

    if not keys:
        raise ViewFusionError("the split holds no objects to draw from")
    draws = []
    for index in range(count):
        rng = np.random.default_rng([seed, index, 0])
        key = keys[int(rng.integers(len(keys)))]
        t = int(rng.integers(1, n_timestep)) if timestep is None else timestep
        u = float(rng.random()) if timestep is None else None
        noise_seed = int(rng.integers(2**62))
        vrng = np.random.default_rng([seed, index, 1])
        if views is None:
            target, cond = select_views(vrng, max_views=max_views, shuffle_prob=shuffle_prob,
                                        self_view_prob=self_view_prob)
        else:
            target, cond = _fixed_views(vrng, views, shuffle_prob, self_view_prob)
        draws.append(Draw(index, key, int(target), tuple(int(v) for v in cond), t, u, noise_seed))
    return draws


def _fixed_views(rng: np.random.Generator, count: int, shuffle_prob: float, self_view_prob: float):
    """select_views with a fixed view count: the same permutation, its first `count` views."""
    order = rng.permutation(nmr.NUM_VIEWS)
    cond = order[1 : 1 + count]
    if rng.random() < shuffle_prob:
        cond = rng.permutation(nmr.NUM_VIEWS)[:count]
    if self_view_prob > 0 and rng.random() < self_view_prob and order[0] not in cond:
        cond = cond.copy()
        cond[rng.integers(count)] = order[0]
    return int(order[0]), cond


def draw_noise(draw: Draw, shape: tuple[int, ...]) -> torch.Tensor:
    """The draw's noise tensor (float32, CPU): its own generator, whatever batch it sits in."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(draw.noise_seed))


def draw_gamma(draw: Draw, gammas: torch.Tensor) -> torch.Tensor:
    """The draw's noise level: SR3's continuous gamma in the training's arithmetic, or gamma_t."""
    if draw.u is None:
        return gammas[draw.t]
    lo, hi = gammas[draw.t - 1], gammas[draw.t]
    return lo + (hi - lo) * torch.tensor(draw.u, dtype=gammas.dtype)


def band_of(t: int, n_timestep: int) -> int:
    """Quarter of the timestep range 1..T-1 that holds t (t = 0 counts in the first)."""
    return min(BANDS - 1, max(0, (t - 1) * BANDS // (n_timestep - 1)))


def band_bounds(n_timestep: int) -> list[tuple[int, int]]:
    """(first t, last t) of each band."""
    ts = range(1, n_timestep)
    bands = [[t for t in ts if band_of(t, n_timestep) == k] for k in range(BANDS)]
    return [(b[0], b[-1]) if b else (0, 0) for b in bands]


def _batch(draws: list[Draw], images, n_views: int, gammas: torch.Tensor, relative: bool, device: torch.device):
    """Tensors of a batch of draws; views padded with zeros to `n_views` (masked by view_count)."""
    first = images(draws[0].key, draws[0].target_view)
    y_0 = torch.stack([images(d.key, d.target_view) for d in draws])
    y_cond = torch.zeros(len(draws), n_views, *first.shape)
    for row, d in enumerate(draws):
        for j, view in enumerate(d.cond_views):
            y_cond[row, j] = images(d.key, view)
    noise = torch.stack([draw_noise(d, tuple(first.shape)) for d in draws])
    gamma = torch.stack([draw_gamma(d, gammas.cpu()) for d in draws])
    out = {"y_0": y_0.to(device), "y_cond": y_cond.to(device), "noise": noise.to(device), "gamma": gamma.to(device),
           "view_count": torch.tensor([len(d.cond_views) for d in draws], device=device)}
    if relative:
        from viewfusion.data.loader import relative_angle

        out["angle"] = torch.tensor([relative_angle(d.target_view, d.cond_views[0]) for d in draws],
                                    dtype=torch.float32, device=device)
        out["y_ref"] = out["y_cond"][:, 0].clone()
    else:
        out["angle"] = torch.tensor([nmr.view_angle(d.target_view) for d in draws], dtype=torch.float32,
                                    device=device)
    return out


@torch.no_grad()
def evaluate(model, draws: list[Draw], images, *, batch_size: int = 32, row_batch: int = 8,
             n_views: int | None = None) -> dict[str, list[float]]:
    """Per-draw numbers of `model` (any device; eval mode and `row_batch` set for the call):
    {"t": [...], "eps_mse": [...], "x0_psnr": [...], and "v_mse" for v-prediction}.

    images(key, view) -> (3, H, W) float32 in [0, 1]. n_views pads every batch to this many
    views (default: the most any draw has), so a draw's numbers do not depend on its batch."""
    from viewfusion.model.diffusion import add_noise

    out: dict[str, list[float]] = {"t": [], "eps_mse": [], "x0_psnr": []}
    if model.prediction == "v":
        out["v_mse"] = []
    if not draws:
        return out
    n_views = n_views or max(len(d.cond_views) for d in draws)
    device = model.gammas.device
    was_training, old_rows = model.training, model.row_batch
    model.eval()
    model.row_batch = row_batch
    try:
        for start in range(0, len(draws), batch_size):
            part = draws[start : start + batch_size]
            b = _batch(part, images, n_views, model.gammas, model.relative, device)
            y_t = add_noise(b["y_0"], b["noise"], b["gamma"])
            composed, _ = model.compose(y_t, b["y_cond"], b["view_count"], b["angle"], b["gamma"],
                                        y_ref=b.get("y_ref"))
            eps = model.noise_from_output(composed, y_t, b["gamma"])
            per = {"eps_mse": _mse(eps, b["noise"])}
            if model.prediction == "v":
                per["v_mse"] = _mse(composed, model.training_target(b["y_0"], b["noise"], b["gamma"]))
            g = b["gamma"].double().reshape(-1, 1, 1, 1)
            x0 = ((y_t.double() - (1 - g).sqrt() * eps.double()) / g.sqrt()).clamp(0, 1)
            mse = (x0 - b["y_0"].double()).pow(2).flatten(1).mean(1)
            per["x0_psnr"] = (10 * torch.log10(1 / mse)).clamp(max=100.0)
            out["t"] += [d.t for d in part]
            for name, values in per.items():
                out[name] += values.double().cpu().tolist()
    finally:
        model.row_batch = old_rows
        model.train(was_training)
    return out


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared error, as F.mse_loss of that row alone (the float32 difference)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def stats(values) -> dict:
    """{"mean", "se", "n"} in float64; se = sample std / sqrt(n) (null for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"mean": float(x.mean()), "se": se, "n": n}


def summarize(per_draw: dict[str, list[float]], *, n_timestep: int, gammas: torch.Tensor, prediction: str) -> dict:
    """Overall and per-band statistics of `evaluate`'s per-draw numbers."""
    names = [m for m in METRICS if m in per_draw]
    bands = np.array([band_of(t, n_timestep) for t in per_draw["t"]], dtype=int)
    g = gammas.double().cpu()
    out = {"loss": "v_mse" if prediction == "v" else "eps_mse",
           **{name: stats(per_draw[name]) for name in names}, "bands": []}
    for k, (lo, hi) in enumerate(band_bounds(n_timestep)):
        mask = bands == k
        out["bands"].append({"band": k, "t_min": lo, "t_max": hi,
                             "gamma_max": float(g[max(lo - 1, 0)]), "gamma_min": float(g[hi]),
                             **{name: stats(np.asarray(per_draw[name])[mask]) for name in names}})
    return out


def draws_sha256(draws: list[Draw]) -> str:
    from viewfusion.fsutil import sha256_json

    return sha256_json([d.as_dict() for d in draws])


# ---------------------------------------------------------------- the command


def split_keys(shards, split: str) -> list[str]:
    from viewfusion.data.shardmanifest import read_shard_manifest

    splits = read_shard_manifest(shards)["splits"]
    if split not in splits:
        raise ViewFusionError(f"--split {split!r}: {shards} has the splits {', '.join(sorted(splits))}")
    return list(splits[split]["objects"])


def image_source(shards, split: str, keys) -> Callable[[str, int], torch.Tensor]:
    """images(key, view) over the objects `keys` of the split (PNG bytes held, views decoded on use)."""
    from viewfusion.data.reader import load_objects

    objects = load_objects(shards, split, keys=sorted(set(keys)))

    def images(key: str, view: int) -> torch.Tensor:
        return objects[key].image(view)

    return images


def heldout(*, checkpoint: str, shards: str, split: str = "val", draws: int = 256, seed: int = 0,
            views: int | None = None, max_views: int | None = None, shuffle_prob: float = 0.0,
            self_view_prob: float = 0.0, timestep: int | None = None, batch_size: int = 32,
            device: str = "auto", weights: str = "auto", row_batch: int | None = None) -> dict:
    """The held-out loss of one checkpoint as the JSON-ready dict `viewfusion heldout` writes."""
    from viewfusion.data.shardmanifest import data_sha256, read_shard_manifest
    from viewfusion.evaluate.sample import load_sampling_model
    from viewfusion.model.device import resolve_device

    if row_batch is not None and row_batch < 1:
        raise ViewFusionError(f"--row-batch {row_batch}: must be at least 1")
    # What can be checked before the model is loaded (the timestep needs its schedule).
    check_settings(draws=draws, seed=seed, max_views=max_views or 1, views=views, shuffle_prob=shuffle_prob,
                   self_view_prob=self_view_prob, n_timestep=2**62, timestep=timestep, batch_size=batch_size)
    keys = split_keys(shards, split)
    dev = resolve_device(device)
    model, info = load_sampling_model(checkpoint, device=dev, weights=weights, row_batch=row_batch)
    max_views = info["max_train_views"] if max_views is None else max_views
    check_settings(draws=draws, seed=seed, max_views=max_views, views=views, shuffle_prob=shuffle_prob,
                   self_view_prob=self_view_prob, n_timestep=model.num_timesteps, timestep=timestep)
    size, trained = read_shard_manifest(shards)["image_size"], model.denoise_fn.config["image_size"]
    if size != trained:
        raise ViewFusionError(f"{shards} holds {size} px images, {checkpoint} was trained at {trained} px")
    chosen = make_draws(keys, count=draws, seed=seed, max_views=max_views, views=views, shuffle_prob=shuffle_prob,
                        self_view_prob=self_view_prob, n_timestep=model.num_timesteps, timestep=timestep)
    per_draw = evaluate(model, chosen, image_source(shards, split, [d.key for d in chosen]),
                        batch_size=batch_size, row_batch=model.row_batch)
    bad = [d.index for d, v in zip(chosen, per_draw["eps_mse"]) if not math.isfinite(v)]
    if bad:
        raise ViewFusionError(f"{checkpoint}: the loss of {len(bad)} draws is NaN/inf (first draw {bad[0]}); "
                              "the weights diverged or the file is damaged")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "checkpoint": str(checkpoint),
        "step": info["step"], "weights": info["weights"], "weights_sha256": info["weights_sha256"],
        "config_sha256": info["config_sha256"], "prediction": model.prediction,
        "settings": {"split": split, "draws": draws, "seed": seed, "views": views, "max_views": max_views,
                     "shuffle_prob": shuffle_prob, "self_view_prob": self_view_prob, "timestep": timestep,
                     "noise": "continuous" if timestep is None else "timestep", "n_timestep": model.num_timesteps,
                     "row_batch": model.row_batch},
        "shards": str(shards), "data_sha256": data_sha256(shards, split), "draws_sha256": draws_sha256(chosen),
        "objects": len({d.key for d in chosen}),
        **summarize(per_draw, n_timestep=model.num_timesteps, gammas=model.gammas, prediction=model.prediction),
        "per_draw": {name: per_draw[name] for name in ("t", *METRICS) if name in per_draw},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of ours (or the official file)")
    parser.add_argument("--shards", required=True, help="shard directory (with manifest.json)")
    parser.add_argument("--split", default="val", help="val (default), test or train")
    parser.add_argument("--draws", type=int, default=256, help="number of fixed draws")
    parser.add_argument("--seed", type=int, default=0, help="the draws' seed (same seed: same draws)")
    parser.add_argument("--views", type=int, default=None, help="exactly this many conditioning views per draw")
    parser.add_argument("--max-views", type=int, default=None,
                        help="1..N conditioning views, uniform as in training (default N: data.max_views)")
    parser.add_argument("--shuffle-prob", type=float, default=0.0, help="the loader's reshuffle probability (0)")
    parser.add_argument("--self-view-prob", type=float, default=0.0,
                        help="probability that the target is among its views (0)")
    parser.add_argument("--timestep", type=int, default=None,
                        help="fix the noise level at gamma_T (default: training's continuous levels)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="draws per forward pass (results do not depend on it)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="auto: the EMA weights when the checkpoint has them")
    parser.add_argument("--row-batch", type=int, default=None, help="U-Net rows per call (8 on CPU, 64 on CUDA)")
    parser.add_argument("--out", default=None, help="JSON file (written atomically); the summary goes to stdout")


def run(args: argparse.Namespace) -> int:
    from viewfusion.fsutil import atomic_write_json, disk_errors

    if args.views is not None and args.max_views is not None:
        raise ViewFusionError("--views and --max-views exclude each other (a fixed count, or 1..N)")
    started = time.perf_counter()
    result = heldout(checkpoint=args.checkpoint, shards=args.shards, split=args.split, draws=args.draws,
                     seed=args.seed, views=args.views, max_views=args.max_views, shuffle_prob=args.shuffle_prob,
                     self_view_prob=args.self_view_prob, timestep=args.timestep, batch_size=args.batch_size,
                     device=args.device, weights=args.weights, row_batch=args.row_batch)
    if args.out:
        with disk_errors(args.out):
            atomic_write_json(Path(args.out), result)
    summary = {k: result[k] for k in ("step", "weights", "loss", *METRICS) if k in result}
    summary["bands"] = [{"t": [b["t_min"], b["t_max"]], **{m: b[m]["mean"] for m in METRICS if m in b}}
                        for b in result["bands"]]
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))
    return 0
