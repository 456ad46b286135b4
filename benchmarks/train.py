"""Training throughput of `viewfusion train`, printed as ONE JSON line.

    .venv/bin/python benchmarks/train.py                         # CPU: tiny and paper configs
    .venv/bin/python benchmarks/train.py --steps 20 --paper-cpu-batch 4
    .venv/bin/python benchmarks/train.py --device cuda           # + paper, batch 28/GPU, bf16, MFU

Real training steps (the trainer's own model build, data stream, step and optimizer step) on a
synthetic dataset rendered into a temporary directory, per config:
- `steps_per_s`, `samples_per_s` (targets), `unet_evals_per_s`: (target, view) rows through the
  U-Net per second, forward + backward, i.e. the sum of the batch's view counts per step;
- `data_wait_frac`: time blocked on the loader / step time (the loader's own workers per config);
- `flops_per_unet_eval`: forward + backward of one row (torch.utils.flop_counter).
On CUDA the paper config runs at per-GPU batch 28 in bf16 autocast and reports
`mfu` = unet_evals_per_s * flops_per_unet_eval / peak dense bf16 FLOP/s of the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from peaks import peak_tflops  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode

from viewfusion.configfile import load_config  # noqa: E402
from viewfusion.model.build import build_model  # noqa: E402
from viewfusion.train import distributed  # noqa: E402
from viewfusion.train import loop as train  # noqa: E402
from viewfusion.train import state as trainstate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_shards(tmp: Path, objects: int) -> Path:
    cli = [sys.executable, "-m", "viewfusion.cli", "data"]
    subprocess.run(cli + ["synth", "--objects", str(objects), "--out", str(tmp / "nmr.zip")],
                   check=True, capture_output=True)
    subprocess.run(cli + ["shard", "--zip", str(tmp / "nmr.zip"), "--out", str(tmp / "shards"),
                          "--shards", "2"], check=True, capture_output=True)
    return tmp / "shards"


def flops_per_unet_eval(cfg, device: torch.device) -> int:
    """Forward + backward FLOPs of one (target, view) row through the U-Net."""
    unet = build_model(cfg).to(device).denoise_fn
    size = cfg.model.image_size
    x = torch.rand(1, cfg.model.in_channel, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        unet(x, torch.zeros(1, device=device), torch.full((1,), 0.5, device=device)).sum().backward()
    return counter.get_total_flops()


def measure(name: str, shards: Path, *, device: str, batch: int, steps: int, warmup: int,
            bf16: bool, peak_tflops_override: float | None = None) -> dict:
    cfg = load_config(ROOT / "config" / "experiments" / f"{name}.yaml",
                      [f"train.global_batch_size={batch}", f"train.checkpoint_every={steps + warmup}",
                       f"train.bf16={str(bf16).lower()}"])
    d = distributed.setup(device=device)
    state = trainstate.build(cfg, d)
    stream = train._data_stream(cfg, d, shards, batch, 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" and bf16 else nullcontext()
    wait = total = rows = 0.0
    with train._StopSignals() as stop:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            b = next(stream)
            t1 = time.perf_counter()
            train._step(state, b, autocast, cfg.train, d, stop, poison=False)  # syncs (loss.tolist)
            train._optimizer_step(state)
            if d.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                wait, total, rows = wait + t1 - t0, total + time.perf_counter() - t0, rows + int(b["view_count"].sum())
    flops = flops_per_unet_eval(cfg, d.device)
    out = {"batch": batch, "steps": steps, "steps_per_s": steps / total, "samples_per_s": steps * batch / total,
           "unet_evals_per_s": rows / total, "data_wait_frac": wait / total,
           "num_workers": cfg.data.num_workers, "flops_per_unet_eval": flops,
           "params": sum(p.numel() for p in state.model.parameters()),
           "dtype": "bf16" if d.device.type == "cuda" and bf16 else "fp32"}
    if d.device.type == "cuda":
        gpu = torch.cuda.get_device_name(d.device)
        tflops = peak_tflops_override or peak_tflops(gpu, "bf16" if bf16 else "fp32")
        peak = tflops * 1e12 if tflops else None
        out.update(gpu=gpu, peak_flops=peak,
                   mfu=rows / total * flops / peak if peak else None,
                   peak_mem_mb=torch.cuda.max_memory_allocated(d.device) / 2**20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per config")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny-batch", type=int, default=8, help="the tiny config's own batch")
    parser.add_argument("--paper-cpu-batch", type=int, default=4, help="paper config on CPU (112 is ~minutes/step)")
    parser.add_argument("--paper-steps-cpu", type=int, default=3)
    parser.add_argument("--gpu-batch", type=int, default=28, help="paper config per GPU, as the paper")
    parser.add_argument("--objects", type=int, default=52, help="synthetic objects rendered")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU configs, plus the GPU run when CUDA is present")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for MFU when benchmarks/peaks.py does not know it")
    args = parser.parse_args()
    result = {"benchmark": "train", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), args.objects)
        if args.device in ("auto", "cpu"):
            result["cpu"] = {
                "tiny": measure("tiny", shards, device="cpu", batch=args.tiny_batch, steps=args.steps,
                                warmup=args.warmup, bf16=False),
                "paper": measure("paper", shards, device="cpu", batch=args.paper_cpu_batch,
                                 steps=args.paper_steps_cpu, warmup=1, bf16=False)}
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
            result["gpu"] = {"paper": measure("paper", shards, device="cuda", batch=args.gpu_batch,
                                              steps=args.steps * 2, warmup=5, bf16=True,
                                              peak_tflops_override=args.peak_tflops)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
