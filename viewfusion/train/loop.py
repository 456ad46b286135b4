"""`viewfusion train`: the paper's training, one process or many (torchrun/DDP), resumable.

    viewfusion train --config config/experiments/tiny.yaml --shards results/shards/all \
        --out results/runs/tiny [--set train.max_steps=100] [--device auto|cpu|cuda]
    torchrun --standalone --nproc-per-node=4 -m viewfusion.cli train \
        --config config/experiments/paper.yaml --shards results/shards/all --out results/runs/paper

RUN_DIR (--out) receives, from rank 0 only:
    config.yaml                      the resolved config
    metrics.jsonl                    one JSON line per log interval (loss, lr, throughput,
                                     step time, data wait) and one per checkpoint written
    checkpoints/last.pt              rolling: every train.checkpoint_every steps and on exit
    checkpoints/step_{N:08d}.pt      snapshots at train.snapshot_steps
    checkpoints/best.pt              the best validation so far (train.validate_every set)
    final.pt                         at train.max_steps
    tb/                              TensorBoard events, when tensorboard is installed

Rerunning the same command resumes from checkpoints/last.pt (model, optimizer, scheduler, EMA,
step, RNG of every rank). The data loader restarts with a seed derived from (train.seed, step)
at every multiple of data.stream_segment; a run resumed from any checkpoint restarts the current
segment and skips its batches up to the checkpoint's step (drawn, not decoded), so it sees
exactly the batches of an uninterrupted run and ends with bit-identical weights (CPU).

Validation (train.validate_every, viewfusion.train.validate): every validate_every steps the EMA (or
raw) weights are measured on the val split: held-out loss on fixed draws and PSNR/SSIM of DDIM
samples of a fixed manifest, spread over the ranks; one `{"event": "validation", ...}` line in
metrics.jsonl, and checkpoints/best.pt when train.validate_metric improved. It runs inside saved
and restored RNG states, so the training (and an exact resume) is that of a run without it; it is
skipped at a step where a stop signal arrived (the checkpoint comes first).

Precision: train.precision auto takes bf16 autocast on GPUs with bf16 tensor cores, fp16 autocast
with a gradient scaler (its state saved in the checkpoint) on older GPUs such as the V100, fp32 on
CPU; bf16/fp16/fp32 force one (config.select_precision). The choice is printed and recorded in
every checkpoint ("precision").

Exit status: 0 when train.max_steps is reached; 75 (PREEMPTED, EX_TEMPFAIL) after SIGTERM,
SIGUSR1 or SIGUSR2 (what Slurm and submitit send before a time limit or preemption): the step in
flight finishes, checkpoints/last.pt is written, and rerunning resumes; 2 on bad input or a loss
that became NaN/inf (the error names the step; no checkpoint is written after it).

Test hooks: VIEWFUSION_FAULT_NAN_STEP=N makes the loss of step N (1-based) NaN;
VIEWFUSION_TEST_STEP_SECONDS=S sleeps S seconds after each step, so that a test of the time-limit
requeue needs the same number of allocations on a fast machine as on a slow one.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
import yaml

from viewfusion.config import ExperimentConfig, TrainConfig, to_dict
from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import disk_errors
from viewfusion.train import distributed, rundir
from viewfusion.train import state as trainstate
from viewfusion.train.log import TrainLogger

PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
FAULT_NAN_ENV = "VIEWFUSION_FAULT_NAN_STEP"
STEP_SECONDS_ENV = "VIEWFUSION_TEST_STEP_SECONDS"


class Outcome(NamedTuple):
    step: int
    finished: bool
    signal: int | None  # the stop signal that ended the run early


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML")
    parser.add_argument("--shards", required=True, type=Path, help="webdataset shard directory")
    parser.add_argument("--out", required=True, type=Path, help="run directory (resumed if present)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=10 (repeatable)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--on-config-change", choices=("refuse", "restart"), default="refuse",
                        help="when RUN_DIR's checkpoint was trained with another config (beyond "
                             f"{', '.join(rundir.RESUMABLE)}): refuse (default), or restart: move the old run "
                             "to RUN_DIR/superseded/<its config sha256>/ and train afresh")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    with disk_errors(args.out):  # metrics.jsonl, config.yaml, TensorBoard: a full disk is one line
        outcome = train(cfg, shards=args.shards, out=args.out, device=args.device,
                        restart_on_change=args.on_config_change == "restart")
    return 0 if outcome.finished else PREEMPTED


def train(cfg: ExperimentConfig, *, shards: Path, out: Path, device: str = "auto",
          restart_on_change: bool = False) -> Outcome:
    d = distributed.setup(device=device)
    try:
        return _train(cfg, d, Path(shards), Path(out), restart_on_change)
    finally:
        distributed.cleanup()


def _train(cfg: ExperimentConfig, d: distributed.Dist, shards: Path, out: Path, restart_on_change: bool) -> Outcome:
    tc = cfg.train
    batch_size = distributed.per_rank_batch(tc.global_batch_size, d.world_size)
    _check_shards(shards, cfg)
    state = trainstate.build(cfg, d)
    done = trainstate.resume(state, cfg, d, out, restart_on_change)
    if state.step >= tc.max_steps:
        if done != "final":  # e.g. max_steps lowered after a checkpoint: the budget is reached
            trainstate.save(state, cfg, d, [out / "final.pt"], out)
        distributed.print0(f"{out}: already at step {state.step} of {tc.max_steps}, nothing to do")
        return Outcome(state.step, True, None)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    validator = None
    if tc.validate_every is not None:
        from viewfusion.train.validate import Validator

        validator = Validator(cfg, d, shards)
    stream = _data_stream(cfg, d, shards, batch_size, state.step)
    with TrainLogger(cfg, d, out, start=state.step) as log, _StopSignals() as stop:
        return _loop(state, cfg, d, out, stream, log, stop, validator)


def _loop(state, cfg, d, out, stream, log, stop, validator=None) -> Outcome:
    tc = cfg.train
    nan_step = int(os.environ.get(FAULT_NAN_ENV, 0))
    step_seconds = float(os.environ.get(STEP_SECONDS_ENV, 0))
    autocast = trainstate.autocast_for(state.precision, d.device)
    while state.step < tc.max_steps:
        time.sleep(step_seconds)
        t0 = time.perf_counter()
        batch = next(stream)
        t1 = time.perf_counter()
        loss, grad_norm, signum = _step(state, batch, autocast, tc, d, stop,
                                        poison=state.step + 1 == nan_step)
        if not math.isfinite(loss):
            raise ViewFusionError(
                f"loss became {loss} at step {state.step + 1}; training stopped before the optimizer "
                f"step, and the last good checkpoint ({_last_saved(out)}) is intact")
        lr = state.optimizer.param_groups[0]["lr"]  # the rate this step uses
        _optimizer_step(state)
        log.step(state.step, loss, lr, grad_norm,
                 batch_time=time.perf_counter() - t0, data_time=t1 - t0)
        if validator is not None and signum is None and state.step % tc.validate_every == 0:
            _validate(state, cfg, d, out, validator, log)  # before the checkpoints: they carry the best
        paths = _due_checkpoints(state.step, tc, out, stopping=signum is not None)
        if paths:
            log.checkpoint(trainstate.save(state, cfg, d, paths, out, keys=batch["key"]))
        if signum is not None:
            distributed.print0(f"stopped by {signal.Signals(signum).name} at step {state.step}: "
                               f"{out / 'checkpoints' / 'last.pt'} written, exit {PREEMPTED}")
            return Outcome(state.step, False, signum)
    return Outcome(state.step, True, None)


def _step(state: trainstate.State, batch: dict, autocast, tc: TrainConfig, d: distributed.Dist,
          stop: _StopSignals, *, poison: bool):
    """Forward + backward on this rank's batch; the loss (mean over ranks), the gradient norm
    (when clipping) and the stop signal any rank received, from one all-reduce."""
    state.net.train()
    with autocast:
        loss = state.net(batch["y_0"], batch["y_cond"], batch["view_count"], batch["angle"],
                         y_ref=batch.get("y_ref"), generator=state.generator)
    if poison:
        loss = loss * float("nan")
    state.optimizer.zero_grad(set_to_none=True)
    (loss if state.scaler is None else state.scaler.scale(loss)).backward()
    flags = torch.tensor([float(stop.received == s) for s in STOP_SIGNALS], device=d.device)
    stats = distributed.all_reduce_(torch.cat([loss.detach().float().reshape(1), flags])).tolist()
    signum = next((s for s, n in zip(STOP_SIGNALS, stats[1:]) if n > 0), None)
    grad_norm = None
    if tc.grad_clip is not None:
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip))
    return stats[0] / d.world_size, grad_norm, signum


def _optimizer_step(state: trainstate.State) -> None:
    if state.scaler is None:
        state.optimizer.step()
    else:  # skips the step when the scaled gradients overflowed, then adapts the scale
        state.scaler.step(state.optimizer)
        state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1


def _validate(state: trainstate.State, cfg, d: distributed.Dist, out: Path, validator, log) -> None:
    """Collective: validate the weights sampling would use, log the line, and write best.pt
    when train.validate_metric improved (every rank sees the same numbers, so all decide alike)."""
    from viewfusion.train.validate import update_best

    model = state.model if state.ema is None else state.ema.module
    row = validator.run(model, weights="raw" if state.ema is None else "ema")
    state.best, improved = update_best(state.best, row, validator.settings, state.step)
    event = trainstate.save(state, cfg, d, [out / "checkpoints" / "best.pt"], out) if improved else None
    log.validation({**row, "step": state.step, "metric": cfg.train.validate_metric, "best": improved,
                    "best_value": None if state.best is None else state.best["value"],
                    "best_step": None if state.best is None else state.best["step"], "time": time.time()})
    if event is not None:
        log.checkpoint(event)


def _due_checkpoints(step: int, tc: TrainConfig, out: Path, *, stopping: bool) -> list[Path]:
    paths = []
    if step in tc.snapshot_steps:
        paths.append(out / "checkpoints" / rundir.snapshot_name(step))
    if step >= tc.max_steps:
        paths.append(out / "final.pt")
    if stopping or step % tc.checkpoint_every == 0 or step >= tc.max_steps:
        paths.append(out / "checkpoints" / "last.pt")  # last, so a resume never skips the others
    return paths


def _last_saved(out: Path) -> str:
    last = out / "checkpoints" / "last.pt"
    return str(last) if last.exists() else "none written yet"


# ---------------------------------------------------------------- data


def _check_shards(shards: Path, cfg: ExperimentConfig) -> None:
    """The shard set must withhold exactly the categories the config expects (manifest.json)."""
    manifest = shards / "manifest.json"
    if not manifest.is_file():
        raise ViewFusionError(f"{shards} holds no manifest.json: not a shard directory "
                              "(make one with `viewfusion data shard`)")
    from viewfusion.data.nmr import SYNSETS, resolve_category
    from viewfusion.data.shardmanifest import read_shard_manifest

    have = sorted(resolve_category(c) for c in read_shard_manifest(shards).get("withheld", []))
    want = sorted(resolve_category(c) for c in cfg.data.withheld)  # names or synset ids
    if have != want:
        have_names, want_names = ([SYNSETS[s] for s in x] or "nothing" for x in (have, want))
        raise ViewFusionError(f"{manifest} withholds {have_names} from train, but config "
                              f"{cfg.name!r} expects data.withheld: {want_names}")


def _data_stream(cfg: ExperimentConfig, d: distributed.Dist, shards: Path, batch_size: int,
                 start: int) -> Iterator[dict]:
    """Batches for steps start, start+1, ... on this rank's device. The loader restarts at every
    multiple of data.stream_segment with a seed of (train.seed, that step); a resume inside a
    segment replays the segment's draws up to `start` without decoding them, so the batches of a
    step depend only on the step, not on where the run was resumed (see the module doc)."""
    from viewfusion.data.loader import train_loader

    dc, every = cfg.data, cfg.data.stream_segment
    step, first = start, start // every * every
    while True:
        loader = train_loader(shards, batch_size=batch_size, max_views=dc.max_views,
                              shuffle_prob=dc.shuffle_prob, self_view_prob=dc.self_view_prob,
                              relative=cfg.model.relative, num_workers=dc.num_workers,
                              seed=trainstate.derive_seed(cfg.train.seed, "data", first), rank=d.rank,
                              world_size=d.world_size, steps_per_epoch=first + every - step,
                              shuffle_buffer=dc.shuffle_buffer, shuffle_initial=dc.shuffle_initial,
                              shard_order=dc.shard_order,
                              skip_batches=step - first)
        batches = iter(loader)  # one epoch covers the rest of the segment
        for _ in range(step, first + every):
            yield _to_device(next(batches), d.device)
        del batches, loader  # shut the workers down before the next segment's start
        step = first = first + every


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------- signals


class _StopSignals:
    """SIGTERM/SIGUSR1/SIGUSR2 only set a flag: the step in flight completes, then the loop
    checkpoints and returns. The previous handlers (e.g. submitit's) come back on exit."""

    def __enter__(self) -> _StopSignals:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
