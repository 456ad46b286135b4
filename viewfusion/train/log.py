"""Training logs of rank 0: a tqdm bar on a terminal (plain lines otherwise), `metrics.jsonl` in
the run directory, TensorBoard when installed, Weights & Biases only when `train.wandb` is set.

Each `metrics.jsonl` line is one log interval (`step`, mean `loss`, `lr`, `step_time_s`,
`steps_per_s`, `samples_per_s`, `data_wait_frac`, `grad_norm` when clipping, `time`) or one
checkpoint event (`{"event": "checkpoint", "step", "files", "ranks"}`) or one validation
(`{"event": "validation", "step", "psnr", "ssim", "heldout_loss", ..., "best"}`, viewfusion.train.validate).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from viewfusion.config import ExperimentConfig, to_dict
from viewfusion.errors import ViewFusionError
from viewfusion.train import distributed


class TrainLogger:
    """Rank 0 only: tqdm bar on a terminal (plain lines otherwise), metrics.jsonl, TensorBoard
    when installed, W&B when train.wandb is set."""

    def __init__(self, cfg: ExperimentConfig, d: distributed.Dist, out: Path, *, start: int):
        self.cfg, self.on, self.out = cfg, d.is_main, out
        self.global_batch = cfg.train.global_batch_size
        self.window: list[tuple[float, float, float, float | None]] = []
        self.bar = self.tb = self.wandb = None
        if self.on:
            self._open(start)

    def _open(self, start: int) -> None:
        tc = self.cfg.train
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=tc.max_steps, initial=start, desc=self.cfg.name, dynamic_ncols=True)
        if tc.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            self.tb = SummaryWriter(str(self.out / "tb")) if SummaryWriter else None
        if tc.wandb:
            self.wandb = wandb_run(self.cfg, self.out)

    def __enter__(self) -> TrainLogger:
        return self

    def step(self, step: int, loss: float, lr: float, grad_norm, *, batch_time: float, data_time: float):
        if not self.on:
            return
        self.window.append((loss, batch_time, data_time, grad_norm))
        if self.bar is not None:
            self.bar.update(1)
        if step % self.cfg.train.log_every == 0 or step == self.cfg.train.max_steps:
            self._flush(step, lr)

    def _flush(self, step: int, lr: float) -> None:
        losses, times, waits, norms = zip(*self.window)
        step_time = sum(times) / len(times)
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": lr, "step_time_s": step_time,
               "steps_per_s": 1 / step_time, "samples_per_s": self.global_batch / step_time,
               "data_wait_frac": sum(waits) / sum(times), "time": time.time()}
        if norms[-1] is not None:
            row["grad_norm"] = sum(norms) / len(norms)
        self.window = []
        self._write(row)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
        else:
            print(f"step {step}/{self.cfg.train.max_steps} loss {row['loss']:.5f} lr {lr:.3e} "
                  f"{row['samples_per_s']:.1f} samples/s data {100 * row['data_wait_frac']:.0f}%", flush=True)
        for key in ("loss", "lr", "samples_per_s", "data_wait_frac", "grad_norm"):
            if self.tb is not None and key in row:
                self.tb.add_scalar(f"train/{key}", row[key], step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)

    def validation(self, row: dict) -> None:
        """One validation line (viewfusion.train.validate); TensorBoard and W&B under val/."""
        if not self.on:
            return
        self._write(row)
        text = (f"validation step {row['step']}: PSNR {row['psnr']:.3f} dB, SSIM {row['ssim']:.4f}, held-out "
                f"{row['heldout_loss_name']} {row['heldout_loss']:.5f} +- {row['heldout_loss_se'] or 0:.5f}"
                + (" (best)" if row.get("best") else ""))
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)
        scalars = {f"val/{key}": row[key] for key in ("psnr", "ssim", "heldout_loss", "heldout_eps_mse")
                   if row.get(key) is not None}
        for key, value in scalars.items():
            if self.tb is not None:
                self.tb.add_scalar(key, value, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def checkpoint(self, event: dict) -> None:
        if self.on:
            self._write(event)

    def _write(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def __exit__(self, *exc) -> None:
        for closable in (self.bar, self.tb):
            if closable is not None:
                closable.close()
        if self.wandb is not None:
            self.wandb.finish()


def wandb_run(cfg: ExperimentConfig, out: Path):
    try:
        import wandb
    except ImportError:
        raise ViewFusionError("train.wandb is true but wandb is not installed (pip install wandb)") from None
    id_file = out / "wandb_run_id"  # the same W&B run continues after a resume
    run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id)
    return wandb.init(project="viewfusion", name=cfg.name, id=run_id, resume="allow",
                      dir=str(out), config=to_dict(cfg))
