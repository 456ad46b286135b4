"""`viewfusion probe`: how much a checkpoint uses its conditioning views, printed as ONE JSON line.

    viewfusion probe --checkpoint results/runs/tiny/final.pt \
        --manifest results/manifests/all/test-v3.json --shards results/shards/all
    viewfusion probe ... --levels 1999,1000,200 --seeds 4 --steps 50 --eta 1 --grid probe.png

For the targets of an evaluation manifest it measures, in PSNR against the ground truth:
* `x0`: the model's one-step estimate of the clean target from y_t = sqrt(gamma_t) y_0 +
  sqrt(1 - gamma_t) eps at each `--levels` step t, once with the target's own conditioning views
  (`cond`) and once with those of another target (`other_cond`, the manifest rolled by one). At
  the top of the schedule y_t holds almost no signal, so `cond` there is the model's posterior
  mean given its inputs; `cond` close to `other_cond` means the views are barely used. `loss`
  is the training objective there (MSE of the composed eps or v prediction, own views);
* `samples`: DDIM samples (`--steps`, `--eta`) from `--seeds` seeds per target (PSNR per seed), the PSNR of their
  pixel mean (what averaging away the sample variance gives) and between two seeds' samples;
* `copy_baseline`: the conditioning view nearest the target in azimuth, copied (the tables'
  `nearest` sampler);
* with `--grid`, a PNG of the first 8 targets: views, ground truth, x0 estimate, one sample.

A sample's squared error is about the posterior mean's plus the sample variance, so samples of a
model whose mean only matches the copy baseline score below it (docs/NOTES.md has the figures).
"""

from __future__ import annotations

import argparse
import io
import json

import torch
from PIL import Image

from viewfusion.data.manifest import read_manifest
from viewfusion.data.reader import load_objects
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate.metrics import psnr as image_psnr
from viewfusion.evaluate.sample import load_sampling_model
from viewfusion.evaluate.targets import build_batch, nearest_view_images
from viewfusion.fsutil import atomic_write_bytes
from viewfusion.model.diffusion import add_noise


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR (data range 1), as the tables average it."""
    return round(float(image_psnr(image, target).mean()), 3)


def x0_estimates(model, batch: dict, gt: torch.Tensor, t: int, *, generator: torch.Generator
                 ) -> tuple[dict, torch.Tensor]:
    """PSNR of the clamped x0 estimate at step t, with the targets' own and with rolled views, and
    the training objective there (MSE of the composed eps or v, own views); also the estimates."""
    sampler = model.make_sampler("ddpm")  # its x0 estimate: DDPM eq. 15 inverted, clamped as the model's
    gamma = sampler.noise_level(t).expand(gt.shape[0])
    noise = torch.randn(gt.shape, generator=generator)
    y_t = add_noise(gt, noise, gamma)
    roll = torch.roll(torch.arange(gt.shape[0]), 1)
    out, images = {}, {}
    for name, index in (("cond", slice(None)), ("other_cond", roll)):
        extra = {"y_ref": batch["y_ref"][index]} if "y_ref" in batch else {}
        pred, _ = model.compose(y_t, batch["y_cond"][index], batch["view_count"][index], batch["angle"],
                                gamma, **extra)
        images[name] = sampler.mean_variance(model.noise_from_output(pred, y_t, gamma), y_t, t)[2].clamp(0, 1)
        out[name] = psnr(images[name], gt)
        if name == "cond":
            out["loss"] = round(float(torch.nn.functional.mse_loss(pred, model.training_target(gt, noise, gamma))), 5)
    return out, images["cond"]


def sample_spread(model, batch: dict, gt: torch.Tensor, *, seeds: int, steps: int, eta: float = 0.0
                  ) -> tuple[dict, list[torch.Tensor]]:
    """DDIM samples from `seeds` seeds per target: PSNR per seed, of their mean, between two."""
    extra = {"y_ref": batch["y_ref"]} if "y_ref" in batch else {}
    images = []
    for k in range(seeds):
        image = model.generate(batch["y_cond"], batch["view_count"], batch["angle"], sampler="ddim",
                               steps=steps, eta=eta, seeds=batch["seeds"] + 1_000_003 * k, **extra)
        images.append((image * 255).round() / 255)  # scored as the 8-bit PNGs are
    out = {"sampler": "ddim", "steps": steps, "eta": eta, "psnr_per_seed": [psnr(i, gt) for i in images],
           "psnr_of_mean": psnr(torch.stack(images).mean(0), gt)}
    if seeds > 1:
        out["psnr_between_seeds"] = psnr(images[0], images[1])
    return out, images


def load_targets(model, manifest: str, shards: str, *, max_targets: int | None = None) -> tuple:
    """The manifest's first `max_targets` items, their objects, the model's batch and the ground truth."""
    m = read_manifest(manifest)
    items = m["items"][:max_targets]
    objects = load_objects(shards, m["split"], sorted({it["key"] for it in items}))
    batch = build_batch(items, objects, relative=model.relative, device=torch.device("cpu"))
    gt = torch.stack([objects[it["key"]].images[it["target_view"]] for it in items])
    return items, objects, batch, gt


def probe(*, checkpoint: str, manifest: str, shards: str, levels: list[int], seeds: int, steps: int,
          eta: float = 0.0, max_targets: int | None = None, grid: str | None = None) -> dict:
    model, info = load_sampling_model(checkpoint, device=torch.device("cpu"))
    bad = [t for t in levels if not 0 <= t < model.num_timesteps]
    if bad:
        raise ViewFusionError(f"--levels {bad}: steps must be in 0..{model.num_timesteps - 1} for {checkpoint}")
    items, objects, batch, gt = load_targets(model, manifest, shards, max_targets=max_targets)
    generator = torch.Generator().manual_seed(0)
    x0, estimates, samples, images = {}, [], None, []
    with torch.inference_mode():
        for t in levels:
            x0[str(t)], estimate = x0_estimates(model, batch, gt, t, generator=generator)
            estimates.append(estimate)
        if seeds:
            samples, images = sample_spread(model, batch, gt, seeds=seeds, steps=steps, eta=eta)
    if grid:
        write_grid(grid, batch, gt, [*estimates[:1], *images[:1]])
    return {"checkpoint": checkpoint, "step": info["step"], "weights": info["weights"],
            "manifest": manifest, "targets": len(items),
            "copy_baseline": psnr(nearest_view_images(items, objects), gt),
            "x0": x0, "samples": samples}


def write_grid(path: str, batch: dict, gt: torch.Tensor, outputs: list[torch.Tensor], *, columns: int = 8) -> None:
    """A PNG with one column per target (the first `columns`): its conditioning views (black when
    padding), the ground truth, then `outputs` (the first level's x0 estimate, the first sample)."""
    n = min(columns, gt.shape[0])
    rows = [batch["y_cond"][:n, v] for v in range(batch["y_cond"].shape[1])] + [gt[:n]] + [o[:n] for o in outputs]
    tiles = torch.stack(rows)  # (R, n, 3, H, W)
    r, _, _, h, w = tiles.shape
    canvas = tiles.permute(0, 3, 1, 4, 2).reshape(r * h, n * w, 3)
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    atomic_write_bytes(path, _png(pixels))


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def parse_levels(text: str) -> list[int]:
    """`--levels 1999,1000,200` as schedule steps; a non-integer is bad input."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ViewFusionError(f"--levels {text!r}: expected comma-separated integer steps, "
                              "e.g. 1999,1000,200") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True, help="an evaluation manifest (viewfusion data manifest)")
    p.add_argument("--shards", required=True)
    p.add_argument("--levels", default="1999,1500,1000,600,200,50",
                   help="comma-separated schedule steps t for the x0 estimates")
    p.add_argument("--seeds", type=int, default=4, help="samples per target (0: no sampling)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per sample")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta of the samples (1: fresh noise every step)")
    p.add_argument("--max-targets", type=int, default=None)
    p.add_argument("--grid", default=None, help="also write a PNG: per target its views, the ground truth, "
                   "the x0 estimate at the first level and the first seed's sample")


def run(args: argparse.Namespace) -> int:
    for flag, value, least in (("--seeds", args.seeds, 0), ("--steps", args.steps, 1),
                               ("--max-targets", args.max_targets, 1)):
        if value is not None and value < least:
            raise ViewFusionError(f"{flag} {value}: must be at least {least}")
    print(json.dumps(probe(checkpoint=args.checkpoint, manifest=args.manifest, shards=args.shards,
                           levels=parse_levels(args.levels), seeds=args.seeds, steps=args.steps, eta=args.eta,
                           max_targets=args.max_targets, grid=args.grid)))
    return 0
