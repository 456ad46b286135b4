"""Quick tiny-model experiments: the training loss and optimiser of `viewfusion train`, without
its loader, checkpoints or DDP, on a train split held in memory. Prints one JSON line per eval.

    OMP_NUM_THREADS=1 python tools/inmemory_train.py --shards results/shards/all \
        --manifest results/manifests/all/test-v3.json --steps 2000 --eval-every 500 \
        --set data.self_view_prob=0.8 [--save run.pt]

Batches are drawn as `train_loader` draws them (`select_views` with the config's max_views,
shuffle_prob and self_view_prob; the relative variant's reference view and angle), objects
uniformly with replacement; the learning rate follows the trainer's schedule
(`trainstate.lr_factor`) or, with --anneal, decays linearly to 0 after its warm-up; the EMA is
the config's. Experiments not in the trainer: --self-view-end (a self_view_prob curriculum)
and --near (the self-view trick with a neighbouring view instead of the target itself).

Each eval scores the EMA weights on the manifest's targets: the clamped x0 estimate at t = T-1
(the posterior mean) and DDIM-50 samples (eta from --eta, the targets' seeds), PSNR against the
ground truth, beside the nearest-view copy baseline. For the figures in docs/NOTES.md only:
runs of `viewfusion train` are what the pipeline evaluates.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

from viewfusion.configfile import load_config
from viewfusion.data import nmr
from viewfusion.data.loader import relative_angle, select_views
from viewfusion.data.manifest import read_manifest
from viewfusion.data.reader import load_objects
from viewfusion.evaluate.targets import build_batch, nearest_view_images
from viewfusion.model.build import build_model
from viewfusion.train import state as trainstate
from viewfusion.workflow import probe


def draw_batch(images: torch.Tensor, rng: np.random.Generator, cfg, *, self_view_prob: float,
               near: int = 0) -> tuple[tuple, dict]:
    """(y_0, y_cond, view_count, angle) for global_batch_size random objects of `images` (O,24,...),
    and {'y_ref': ...} for the relative variant (angle then relative to the first view)."""
    size, views = cfg.train.global_batch_size, cfg.data.max_views
    objects = rng.integers(len(images), size=size)
    target = np.empty(size, np.int64)
    cond = np.zeros((size, views), np.int64)  # padding repeats view 0; view_count masks it
    count = np.empty(size, np.int64)
    for i in range(size):
        target[i], chosen = select_views(rng, max_views=views, shuffle_prob=cfg.data.shuffle_prob,
                                         self_view_prob=0.0 if near else self_view_prob)
        if near and rng.random() < self_view_prob:  # a view within `near` steps of the target
            view = (target[i] + rng.integers(-near, near + 1)) % nmr.NUM_VIEWS
            if view not in chosen:
                chosen = chosen.copy()
                chosen[rng.integers(len(chosen))] = view
        cond[i, : len(chosen)], count[i] = chosen, len(chosen)
    y_cond = images[objects[:, None], cond]
    if cfg.model.relative:
        angle = torch.tensor([relative_angle(int(t), int(r)) for t, r in zip(target, cond[:, 0])])
        extra = {"y_ref": y_cond[:, 0].clone()}
    else:
        angle, extra = torch.tensor([nmr.view_angle(int(t)) for t in target], dtype=torch.float32), {}
    return (images[objects, target], y_cond, torch.from_numpy(count), angle), extra


def lr_factor(step: int, tc, total: int, anneal: bool) -> float:
    """The trainer's schedule (`trainstate.lr_factor`), or with `anneal` its warm-up, then a linear
    decay to 0 at `total` (an experiment the trainer does not have)."""
    if not anneal or step < tc.warmup_steps:
        return trainstate.lr_factor(step, tc)
    return (total - step) / max(1, total - tc.warmup_steps)


@torch.inference_mode()
def evaluate(model, batch: dict, gt: torch.Tensor, *, eta: float) -> tuple[float, float]:
    """(PSNR of the x0 estimate at the top of the schedule, PSNR of DDIM-50 samples), as
    `viewfusion probe` measures them."""
    x0, _ = probe.x0_estimates(model, batch, gt, model.num_timesteps - 1,
                                     generator=torch.Generator().manual_seed(0))
    samples, _ = probe.sample_spread(model, batch, gt, seeds=1, steps=50, eta=eta)
    return x0["cond"], samples["psnr_per_seed"][0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/experiments/tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--shards", required=True)
    p.add_argument("--manifest", required=True, help="evaluation manifest (test split, one view count)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta of the eval samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anneal", action="store_true",
                   help="after the warm-up, decay the learning rate linearly to 0 at --steps")
    p.add_argument("--self-view-end", type=float, default=None,
                   help="move data.self_view_prob linearly to this value at --steps (a curriculum)")
    p.add_argument("--near", type=int, default=0,
                   help="the self-view trick puts a view within this many 15-degree steps of the "
                        "target among the conditioning views (0: the target itself)")
    p.add_argument("--save", default=None, help="write {'ema', 'raw', 'set'} state dicts here at the end")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    ema = copy.deepcopy(model).eval()
    images = torch.stack([o.images for o in load_objects(args.shards, "train").values()])
    items = read_manifest(args.manifest)["items"]
    objects = load_objects(args.shards, "test", sorted({it["key"] for it in items}))
    batch = build_batch(items, objects, relative=model.relative, device=torch.device("cpu"))
    gt = torch.stack([objects[it["key"]].images[it["target_view"]] for it in items])
    copy_psnr = probe.psnr(nearest_view_images(items, objects), gt)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    rng, start, losses = np.random.default_rng(args.seed), time.time(), []
    start_p = cfg.data.self_view_prob
    end_p = start_p if args.self_view_end is None else args.self_view_end
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = cfg.train.lr * lr_factor(step, cfg.train, args.steps, args.anneal)
        self_view_prob = start_p + (end_p - start_p) * step / args.steps
        tensors, extra = draw_batch(images, rng, cfg, self_view_prob=self_view_prob, near=args.near)
        loss = model.loss(*tensors, **extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for e, w in zip(ema.parameters(), model.parameters()):
                e.lerp_(w, 1 - cfg.train.ema_decay)
        if step % args.eval_every == 0:
            x0, sample = evaluate(ema, batch, gt, eta=args.eta)
            print(json.dumps({"step": step, "loss": round(float(np.mean(losses[-100:])), 4),
                              "x0_top": round(x0, 2), "ddim50": round(sample, 2), "eta": args.eta,
                              "copy": round(copy_psnr, 2), "seconds": round(time.time() - start)}), flush=True)
    if args.save:
        torch.save({"ema": ema.state_dict(), "raw": model.state_dict(), "set": args.set}, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
