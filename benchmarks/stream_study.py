"""Per-step learning against the sample stream (issue 21): train the tiny U-Net with one stream
setting (an "arm") at several seeds, measure every final.pt on fixed held-out draws, tabulate.

    OMP_NUM_THREADS=1 python benchmarks/stream_study.py run --shards SHARDS --out DIR \
        --arm today --seeds 0 1 2 3
    python benchmarks/stream_study.py table --out DIR          # markdown: mean and 95% CI
    # the official code's own trainer (benchmarks/official_train.py) on its own shards of the zip:
    PYTHONPATH=/tmp/offlib OMP_NUM_THREADS=1 python benchmarks/stream_study.py run --shards SHARDS \
        --out DIR --arm official_code --official /tmp/official DATA/NMR_sharded_100_2 --seeds 0 1 2 3

SHARDS: the demo's data (`viewfusion data synth --objects 260 --seed 0`, then `viewfusion data
shard --shards 2 --percent 100 --lists viewfusion`). The settings are the issue's, on both sides of
its comparison: eps prediction, no self-views, no EMA, no clipping, batch 8, lr 1e-3 after a
100-step warm-up, 1500 steps (tiny.yaml's); validation off (it never changes the training).
A run whose final.pt exists is not retrained; a measurement whose JSON exists is not redone.
Runs go one after another: on 2 shared cores each takes 15-25 minutes on one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
BASE = ["diffusion.prediction=eps", "data.self_view_prob=0.0", "train.ema_decay=null",
        "train.grad_clip=null", "train.validate_every=null"]
# The stream before issue 21, and the official code's (a 1000-sample buffer, no loader restart,
# shards drawn with replacement, a first step at lr 0); then each official factor alone.
TODAY = {"data.shuffle_buffer": "256", "data.stream_segment": "250", "data.shard_order": "resample",
         "train.warmup_offset": "1"}
ARMS = {
    "today": TODAY,
    "official": {**TODAY, "data.shuffle_buffer": "1000", "data.stream_segment": "1500",
                 "train.warmup_offset": "0"},
    # The official arm plus webdataset's default start (picks from 100 held samples on).
    "official_initial100": {**TODAY, "data.shuffle_buffer": "1000", "data.stream_segment": "1500",
                            "train.warmup_offset": "0", "data.shuffle_initial": "100"},
    "buffer1000": {**TODAY, "data.shuffle_buffer": "1000"},
    "no_restart": {**TODAY, "data.stream_segment": "1500"},
    "warmup0": {**TODAY, "train.warmup_offset": "0"},
    "epoch_shards": {**TODAY, "data.shard_order": "epoch"},
}
# The official code's own trainer (benchmarks/official_train.py) on its own shards of the same zip.
OFFICIAL_CODE = "official_code"
# name -> (split, heldout options, summary key): the three held-out measures.
MEASURES = {
    "test_eps": ("test", ["--draws", "520"], "eps_mse"),
    "train_eps": ("train", ["--draws", "546"], "eps_mse"),
    "x0_psnr_t1000": ("test", ["--draws", "26", "--views", "3", "--timestep", "1000"], "x0_psnr"),
}


def viewfusion(*argv: str, log: Path) -> None:
    with log.open("w") as fh:
        subprocess.run([str(Path(sys.executable).with_name("viewfusion")), *argv], cwd=ROOT, check=True,
                       stdout=fh, stderr=subprocess.STDOUT)


def train_official(official: list[Path], run: Path, seed: int) -> None:
    """benchmarks/official_train.py: official = [checkout, its dataset_prep.py shard folder]."""
    with (run / "train.log").open("w") as fh:
        subprocess.run([sys.executable, str(ROOT / "benchmarks/official_train.py"), "--official", str(official[0]),
                        "--shards", str(official[1]), "--seed", str(seed), "--out", str(run)],
                       check=True, stdout=fh, stderr=subprocess.STDOUT)


def run_seed(shards: Path, out: Path, arm: str, seed: int, official: list[Path] | None = None) -> None:
    """Train one arm at one seed (unless done) and measure its final.pt (unless done)."""
    run = out / arm / f"seed{seed}"
    if not (run / "final.pt").exists():
        run.mkdir(parents=True, exist_ok=True)
        if arm == OFFICIAL_CODE:
            train_official(official, run, seed)
        else:
            sets = [*BASE, *(f"{k}={v}" for k, v in ARMS[arm].items()), f"train.seed={seed}"]
            viewfusion("train", "--config", "config/experiments/tiny.yaml", "--shards", str(shards),
                       "--out", str(run), *(x for s in sets for x in ("--set", s)), log=run / "train.log")
    for name, (split, options, _) in MEASURES.items():
        if not (run / f"{name}.json").exists():
            viewfusion("heldout", "--checkpoint", str(run / "final.pt"), "--shards", str(shards),
                       "--split", split, "--seed", "0", *options, "--out", str(run / f"{name}.json"),
                       log=run / f"{name}.log")


def train_loss(run: Path, first: int = 1001, last: int = 1500) -> float:
    """Mean training loss of steps first..last (metrics.jsonl lines are equal-length intervals)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and first <= r["step"] <= last]
    return sum(losses) / len(losses)


def summary(values: list[float]) -> str:
    """mean +- half-width of the 95% t interval over seeds (the values listed after it)."""
    n, mean = len(values), sum(values) / len(values)
    half = (stats.t.ppf(0.975, n - 1) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
            if n > 1 else float("nan"))
    return f"{mean:.4f} +- {half:.4f} ({' / '.join(f'{v:.4f}' for v in values)})"


def table(out: Path) -> str:
    """One markdown row per arm: seeds, then each measure's mean +- 95% CI over its seeds."""
    head = ("| arm | seeds | train loss 1001-1500 | test eps-MSE (520) | train eps-MSE (546) | "
            "x0 PSNR t=1000, 3 views (26) |")
    lines = [head, "|---|---|---|---|---|---|"]
    for arm in [*ARMS, OFFICIAL_CODE]:
        runs = sorted(p for p in (out / arm).glob("seed*") if (p / "x0_psnr_t1000.json").exists())
        if not runs:
            continue
        cells = [summary([train_loss(r) for r in runs])]
        for name, (_, _, key) in MEASURES.items():
            cells.append(summary([json.loads((r / f"{name}.json").read_text())[key]["mean"] for r in runs]))
        lines.append(f"| {arm} | {', '.join(r.name[4:] for r in runs)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shards", type=Path)
    parser.add_argument("--arm", choices=sorted([*ARMS, OFFICIAL_CODE]))
    parser.add_argument("--official", type=Path, nargs=2, metavar=("CHECKOUT", "SHARDS"),
                        help=f"for --arm {OFFICIAL_CODE}: the official checkout and its dataset_prep.py shards")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    if args.action == "table":
        print(table(args.out))
        return
    if args.shards is None or args.arm is None:
        parser.error("run needs --shards and --arm")
    if args.arm == OFFICIAL_CODE and args.official is None:
        parser.error(f"--arm {OFFICIAL_CODE} needs --official CHECKOUT SHARDS")
    for seed in args.seeds:
        run_seed(args.shards, args.out, args.arm, seed, args.official)


if __name__ == "__main__":
    main()
