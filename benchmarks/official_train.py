"""Issue 21's reference arm: the official code's own trainer (bronemos/view-fusion `Experiment`)
on the study's data at one seed, saved as our checkpoint so `viewfusion heldout` measures it.

    git clone https://github.com/bronemos/view-fusion /tmp/official     # tested at 5127e5c
    pip install --target /tmp/offlib einops                               # its one import we lack
    python /tmp/official/data/dataset_prep.py -s DATA -d DATA -sc 2       # its own shards
    PYTHONPATH=/tmp/offlib OMP_NUM_THREADS=1 python benchmarks/official_train.py \
        --official /tmp/official --shards DATA/NMR_sharded_100_2 --seed 0 --out RUN

Nothing of the official training is rewritten: `Experiment.__init__` builds its model, Adam,
WebDataset stream (`shuffle(1000)`, resampled shards, `worker_init_fn` from os.urandom) and
WebLoader, and `Experiment.train` runs its loop (view count per sample, lr per step from `it` 0)
until its own `max_it` exit. What this file changes, each the issue's setting for both sides:
the tiny U-Net of `config/experiments/tiny.yaml` (`ModelConfig.unet_kwargs`), batch 8, 3 views,
a 100-step warm-up and a peak lr of 1e-3 (`experiment.py` hard-codes 1e-4: its `LrScheduler` is
wrapped), 1500 steps, no validation; `torch.manual_seed(seed)` before the model is built (the
stream stays unseeded, as in the official code). wandb is only imported, never used: a stand-in
module is registered when it is not installed. Writes RUN/final.pt (ours, eps prediction, with
`imported_from`), RUN/metrics.jsonl (mean loss per train.log_every steps, as `viewfusion train` logs) and
RUN/official/ (its model.pt and config.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

import torch
import yaml
from stream_study import BASE  # the settings for both sides (eps prediction, ...)

from viewfusion.configfile import load_config
from viewfusion.model import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def official_config(cfg, shards: Path, shard_count: int, steps: int) -> dict:
    """The official YAML for the issue's settings (keys as in its configs/*.yaml); it reads shards
    0 .. shard_count - 1 (dataset_prep.py's `-sc`; its overflow shard is never read)."""
    schedule = {"schedule": cfg.diffusion.schedule, "num_timesteps": cfg.diffusion.n_timestep,
                "linear_start": cfg.diffusion.linear_start, "linear_end": cfg.diffusion.linear_end}
    split = {"start_shard": 0, "end_shard": shard_count - 1, "path": str(shards)}
    return {
        "lr_warmup": cfg.train.warmup_steps,
        "model": {"max_it": steps - 2, "validate_from": 10**9, "checkpoint_every": 0, "log_every": 0,
                  "denoise_net": "unet", "denoise_net_params": cfg.model.unet_kwargs(),
                  "view_fusion_params": {"beta_schedule": {"train": schedule, "test": schedule}}},
        "data": {"params": {"num_workers": 1, "max_views": cfg.data.max_views,
                            "batch_size": cfg.train.global_batch_size,
                            "train": {"params": {**split, "mode": "train"}},
                            "test": {"params": {**split, "mode": "test", "size": 52}}}},
    }


def run(official: Path, shards: Path, shard_count: int, seed: int, out: Path, steps: int = 1500) -> None:
    cfg = load_config(ROOT / "config/experiments/tiny.yaml", [*BASE, f"train.seed={seed}"])
    work = out / "official"
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(official_config(cfg, shards, shard_count, steps)))
    # benchmarks/model.py and data.py would shadow the official `model` and `data` packages.
    sys.path[:] = [str(official), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent)]
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    import experiment  # the official module

    peak = cfg.train.lr
    base_scheduler = experiment.LrScheduler
    experiment.LrScheduler = lambda **kw: base_scheduler(**{**kw, "peak_lr": peak})
    args = argparse.Namespace(config=str(work / "config.yaml"), src=None, gpu=False, train=True,
                              eval=False, resume=False, wandb=False, inference=False)
    os.chdir(work)  # the official trainer writes ./logs/<time>-config/
    torch.manual_seed(seed)
    exp = experiment.Experiment(args)
    losses: list[float] = []
    exp.model.register_forward_hook(lambda _m, _a, loss: losses.append(loss.detach().item()))
    try:
        exp.train()
    except SystemExit:
        pass
    saved = next(Path("logs").glob("*/model.pt"))
    official_ckpt = torch.load(saved, map_location="cpu", weights_only=True)
    ours = checkpoint.convert_official({**official_ckpt, "it": len(losses)}, cfg=cfg, source=str(saved))
    checkpoint.save(out / "final.pt", ours)
    every = cfg.train.log_every
    rows = [{"step": end, "loss": sum(losses[end - every:end]) / every} for end in range(every, len(losses) + 1, every)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(losses)} steps; mean loss of the last 500: {sum(losses[-500:]) / len(losses[-500:]):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of bronemos/view-fusion")
    parser.add_argument("--shards", type=Path, required=True, help="its dataset_prep.py output folder")
    parser.add_argument("--shard-count", type=int, default=2, help="dataset_prep.py's -sc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500, help="the issue's 1500")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run(args.official.resolve(), args.shards.resolve(), args.shard_count, args.seed, args.out.resolve(), args.steps)


if __name__ == "__main__":
    main()
