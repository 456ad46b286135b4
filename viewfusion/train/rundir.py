"""Run directories across config changes: what a resume may change, and where an old run goes.

`viewfusion train` resumes RUN_DIR's newest checkpoint only when the resolved config equals the
checkpoint's up to RESUMABLE; otherwise it refuses, or (`--on-config-change restart`, what the
workflow's train rule passes once the config's fingerprint changed) moves the old run into
RUN_DIR/superseded/ and trains afresh. Old weights are never continued or relabelled under a
config they were not trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

from viewfusion.config import ExperimentConfig, config_sha256, to_dict


def snapshot_name(step: int) -> str:
    """The file name of the snapshot at `step` in RUN_DIR/checkpoints/ (train writes it, the
    workflow's sampling reads it)."""
    return f"step_{int(step):08d}.pt"


# Keys a resume may change: they alter neither the weights' training nor the batches (the data
# stream restarts at multiples of data.stream_segment, whatever the checkpoint cadence).
# Validation runs inside saved and restored RNG states (viewfusion.train.validate), so switching it on
# or changing its settings mid-run leaves the training as it was; best.pt then starts afresh.
RESUMABLE = ("description", "train.max_steps", "train.checkpoint_every", "train.log_every", "train.snapshot_steps",
             "train.tensorboard", "train.wandb", "train.validate_every", "train.validate_draws",
             "train.validate_targets", "train.validate_views", "train.validate_steps", "train.validate_metric",
             "train.validate_seed")


def resume_changes(old: ExperimentConfig, new: ExperimentConfig, *, step: int) -> list[str]:
    """What stops a checkpoint of `old` at `step` from continuing as a run of `new`: any key
    outside RESUMABLE that differs, a max_steps below the step reached, or a snapshot step
    added that has already passed (it could never be written)."""
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    changes = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
               if a.get(k) != b.get(k) and k not in RESUMABLE]
    if new.train.max_steps < step:
        changes.append(f"train.max_steps {new.train.max_steps} is below the checkpoint's step {step}")
    missed = sorted(s for s in set(new.train.snapshot_steps) - set(old.train.snapshot_steps) if s <= step)
    if missed:
        changes.append(f"train.snapshot_steps adds {missed}, already passed at step {step}")
    return changes


def _flat(d: dict, prefix: str = "") -> dict:
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}


def supersede(out: Path, old: ExperimentConfig, d, changes: list[str]) -> None:
    """Move the old run's files to RUN_DIR/superseded/<old config sha256[:12]>[-k]/ (rank 0; all
    ranks wait), so nothing of it is resumed or relabelled, and nothing is deleted."""
    from viewfusion.train import distributed  # torch: only here, so the Snakefile can import this module

    if d.is_main:
        base = out / "superseded" / config_sha256(old)[:12]
        dest, k = base, 1
        while dest.exists():
            dest, k = base.with_name(f"{base.name}-{k}"), k + 1
        dest.mkdir(parents=True)
        for name in ("checkpoints", "final.pt", "metrics.jsonl", "config.yaml", "tb"):
            if (out / name).exists():
                os.replace(out / name, dest / name)
        distributed.print0(f"config changed ({'; '.join(changes)}): old run moved to {dest}; training afresh")
    distributed.barrier()
