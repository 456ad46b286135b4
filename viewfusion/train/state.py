"""The state of a training run: built once, saved collectively, resumed exactly (`viewfusion.train.loop`).

A checkpoint holds the model, optimizer, scheduler, EMA, gradient scaler, step, the best
validation, the resolved config and every rank's RNG states; `resume` restores all of it, so a
resumed run continues bit-identically (CPU), or supersedes the old run when the config differs.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from viewfusion.config import ExperimentConfig, TrainConfig, select_precision, to_dict
from viewfusion.errors import ViewFusionError
from viewfusion.model import checkpoint
from viewfusion.model.build import build_model
from viewfusion.train import distributed, rundir


@dataclass
class State:
    model: torch.nn.Module  # the ViewFusion module (official state-dict names)
    net: torch.nn.Module  # what the step calls: model, DDP(model), maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: AveragedModel | None
    generator: torch.Generator  # the loss's noise, t and gamma (per rank)
    step: int  # optimizer steps done
    precision: str = "fp32"  # resolved train.precision: bf16, fp16 or fp32 (select_precision)
    scaler: torch.amp.GradScaler | None = None  # fp16 only: loss scaling against underflow
    best: dict | None = None  # the best validation so far: {"metric", "value", "step", "settings"}


def lr_factor(step: int, tc: TrainConfig) -> float:
    """Multiplier of train.lr for the optimizer step with 0-based index `step`: linear warm-up
    (step + train.warmup_offset)/warmup (offset 0 is the official code's, whose first step runs
    at lr 0), then a smooth exponential decay by train.lr_decay per train.lr_decay_steps, as the
    official LrScheduler."""
    if step < tc.warmup_steps:
        return (step + tc.warmup_offset) / tc.warmup_steps
    return tc.lr_decay ** ((step - tc.warmup_steps) / tc.lr_decay_steps)


def build(cfg: ExperimentConfig, d: distributed.Dist) -> State:
    tc = cfg.train
    if d.device.type == "cuda":
        # Autotuned convolutions and TF32 matmuls: speed over bitwise GPU reproducibility.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(derive_seed(tc.seed, "init"))  # identical initial weights on every rank
    model = build_model(cfg).to(d.device)
    net = model
    if d.enabled:
        net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tc.adam_betas, eps=tc.adam_eps,
                                 weight_decay=tc.weight_decay, fused=d.device.type == "cuda")
    ema = None
    if tc.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    generator = torch.Generator(device=d.device)
    seed_rngs(tc.seed, d.rank, generator, step=0)
    precision = resolve_precision(tc.precision, d.device)
    scaler = torch.amp.GradScaler(d.device.type) if precision == "fp16" else None
    return State(model, net, optimizer, scheduler(optimizer, tc, 0), ema, generator, 0, precision, scaler)


def resolve_precision(requested: str, device: torch.device) -> str:
    """train.precision on this device (config.select_precision, fed the device's capability):
    bf16 tensor cores are compute capability 8.0+ (torch.cuda.is_bf16_supported without
    emulation, which would say yes on a V100)."""
    bf16_cores = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    precision, reason = select_precision(requested, device_type=device.type, bf16_tensor_cores=bf16_cores)
    if precision == "bf16" and device.type == "cuda" and not bf16_cores:
        distributed.print0("warning: train.precision bf16 on a GPU without bf16 tensor cores: emulated, slow "
                           "(auto would take fp16 with a gradient scaler)")
    distributed.print0(f"precision: {precision} ({reason})")
    return precision


def autocast_for(precision: str, device: torch.device):
    """The autocast context of a resolved precision (fp32: none; CPU autocast takes bf16 and fp16)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def scheduler(optimizer, tc: TrainConfig, step: int) -> torch.optim.lr_scheduler.LambdaLR:
    for group in optimizer.param_groups:
        group["initial_lr"] = tc.lr  # lets LambdaLR start at any step (last_epoch = step - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc), last_epoch=step - 1)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings: independent streams per purpose and rank."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def seed_rngs(seed: int, rank: int, generator: torch.Generator, *, step: int) -> None:
    generator.manual_seed(derive_seed(seed, "loss", rank, step))
    torch.manual_seed(derive_seed(seed, "torch", rank, step))
    np.random.seed(derive_seed(seed, "numpy", rank, step) % 2**32)
    random.seed(derive_seed(seed, "python", rank, step))


def resume(state: State, cfg: ExperimentConfig, d: distributed.Dist, out: Path, restart_on_change: bool) -> str | None:
    """Load RUN_DIR's newest checkpoint into `state`; returns which file ("last"/"final") or None
    (a fresh run: none there, or the old run superseded because its config differs)."""
    final, last = out / "final.pt", out / "checkpoints" / "last.pt"
    which = "last" if last.exists() else "final" if final.exists() else None
    if which is None:
        return None
    path = last if which == "last" else final
    ckpt = checkpoint.load(path)
    changes = rundir.resume_changes(checkpoint.config_of(ckpt, source=str(path)), cfg, step=int(ckpt["step"]))
    if changes and not restart_on_change:
        raise ViewFusionError(f"{path} was trained with another config ({'; '.join(changes)}); resuming would "
                              "label its weights with the new one. Use a new --out, or pass "
                              "--on-config-change restart to move the old run aside and train afresh")
    if changes:
        rundir.supersede(out, checkpoint.config_of(ckpt), d, changes)
        return None
    checkpoint.load_state(state.model, ckpt["model"], source=str(path))
    if ckpt["optimizer"] is not None:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step = int(ckpt["step"])
    state.scheduler = scheduler(state.optimizer, cfg.train, state.step)
    if ckpt["scheduler"] is not None:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    _load_ema(state, ckpt, path)
    if ckpt.get("best") is not None:  # the best validation of the run continued
        from viewfusion.train.validate import resumed_best

        state.best = resumed_best(ckpt["best"], cfg)
    if state.scaler is not None and ckpt.get("scaler"):  # absent: bf16/fp32 before, or an old file
        state.scaler.load_state_dict(ckpt["scaler"])
    _restore_rngs(state, ckpt, cfg, d)
    distributed.print0(f"resumed from {path} at step {state.step}")
    return which


def _load_ema(state: State, ckpt: dict, path: Path) -> None:
    if state.ema is None:
        return
    if ckpt.get("ema") is None:
        # EMA switched on mid-run (or an imported checkpoint): start it from the current weights.
        distributed.print0(f"{path} has no EMA; starting it from the loaded weights")
        return
    checkpoint.load_state(state.ema.module, ckpt["ema"]["model"], source=f"{path} (EMA weights)")
    state.ema.n_averaged.fill_(int(ckpt["ema"]["n_averaged"]))


def _rng_state(state: State) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "generator": state.generator.get_state(),
            "cuda": torch.cuda.get_rng_state() if state.generator.device.type == "cuda" else None,
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def _restore_rngs(state: State, ckpt: dict, cfg: ExperimentConfig, d: distributed.Dist) -> None:
    if ckpt.get("rng") is None or ckpt.get("world_size") != d.world_size:
        # A different number of ranks (or an imported file): fresh streams, seeded by the step.
        distributed.print0(f"RNG states not restorable for {d.world_size} ranks; reseeding from the step")
        seed_rngs(cfg.train.seed, d.rank, state.generator, step=state.step)
        return
    rng = ckpt["rng"][d.rank]
    torch.set_rng_state(rng["torch"])
    state.generator.set_state(rng["generator"])
    if rng["cuda"] is not None and d.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
    random.setstate(rng["python"])


def save(state: State, cfg, d: distributed.Dist, paths: list[Path], out: Path, keys=()) -> dict:
    """Collective: gathers every rank's RNG state, weight fingerprint and last batch keys; rank 0
    writes the same dict to every path (atomically). Returns the checkpoint event for the log."""
    # The same identity as sampling's (checkpoint.weights_sha256 of the raw weights), equal on all
    # ranks iff DDP kept them in sync.
    mine = {"rng": _rng_state(state), "weights_sha256": checkpoint.weights_sha256(state.model.state_dict()),
            "keys": list(keys)}
    ranks = distributed.all_gather_object(mine)
    if d.is_main:
        ckpt = {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
                "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(), "ema": _ema_dict(state, cfg),
                "step": state.step, "config": to_dict(cfg), "rng": [r["rng"] for r in ranks],
                "world_size": d.world_size, "precision": state.precision,
                "scaler": None if state.scaler is None else state.scaler.state_dict(), "best": state.best}
        for path in paths:
            checkpoint.save(path, ckpt)
    distributed.barrier()  # nobody races ahead (or exits) before the files exist
    return {"event": "checkpoint", "step": state.step, "files": [str(p.relative_to(out)) for p in paths],
            "ranks": [{"rank": i, "weights_sha256": r["weights_sha256"], "batch_keys": r["keys"]}
                      for i, r in enumerate(ranks)]}


def _ema_dict(state: State, cfg: ExperimentConfig) -> dict | None:
    if state.ema is None:
        return None
    return {"decay": cfg.train.ema_decay, "n_averaged": int(state.ema.n_averaged),
            "model": state.ema.module.state_dict()}
