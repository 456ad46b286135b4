"""Benchmark of the ViewFusion model against an official-style baseline; prints ONE JSON line.

    .venv/bin/python benchmarks/model.py                     # CPU, fp32, paper config
    .venv/bin/python benchmarks/model.py --dtype bf16        # CPU, bf16 autocast on both sides
    .venv/bin/python benchmarks/model.py --threads 16        # a dedicated CPU: all cores, wall time
    .venv/bin/python benchmarks/model.py --device cuda --dtype bf16   # a GPU, with MFU

On CPU the default is one thread timed by process CPU time: on a shared machine wall-clock
timings of multi-threaded runs measure the neighbours (OpenMP threads spin against them).

What is measured (paper U-Net, batch 4 targets x 3 valid views of 6 = 12 U-Net rows, 64x64):
* training: forward + backward of the loss, ours and `official_baseline.py` (loaded with the
  same state dict, same inputs, same precision), interleaved, `--repeats` times each; the
  minimum is reported (the least disturbed run); `train_step_s` adds Adam for ours.
* sampling: one reverse step (no grad) of both, per U-Net evaluation.
* DDIM-50 vs ancestral-2000 per target (1 target, 3 views): the per-step cost of both samplers
  is measured through the same `iter_sample` loop over `--sample-steps` steps, and a whole run is
  per-step cost x steps (2000 ancestral steps are not run: 30+ minutes on a CPU).
* FLOPs per U-Net evaluation: `torch.utils.flop_counter` on one row (forward, and forward +
  backward), with the CPU flash-attention kernels counted by torch's own SDPA formulas; the
  achieved rate of both models as a fraction of a 2048^3 GEMM's rate (the practical roof).
* peak memory of one forward + backward: a fresh subprocess per variant (`--peak-mem`); CPU:
  VmHWM - VmRSS (peak reset with /proc/self/clear_refs after a warm-up step and malloc_trim),
  so imports, weights and gradient buffers are excluded; CUDA: max_memory_allocated delta.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import torch
from official_baseline import BaselineUNet, BaselineViewFusion  # noqa: E402
from peaks import peak_tflops as known_peak  # noqa: E402

from viewfusion.model.diffusion import Schedule  # noqa: E402
from viewfusion.model.unet import UNet  # noqa: E402
from viewfusion.model.viewfusion import PAPER_UNET_KWARGS, ViewFusion  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, both models")
    p.add_argument("--batch", type=int, default=4, help="targets per batch")
    p.add_argument("--views", type=int, default=3, help="valid conditioning views per target")
    p.add_argument("--max-views", type=int, default=6, help="views held by y_cond (the rest is padding)")
    p.add_argument("--repeats", type=int, default=5, help="timed training steps per model")
    p.add_argument("--sample-steps", type=int, default=5, help="timed steps per sampler")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on cpu)")
    p.add_argument("--clock", default=None, choices=["wall", "cpu"],
                   help="cpu: process CPU time, needs --threads 1 (default on cpu with one thread)")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU when the device is not known")
    p.add_argument("--peak-mem", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and (args.threads != 1 or args.device != "cpu"):
        p.error("--clock cpu measures one CPU thread: use it with --threads 1 on --device cpu")
    if not 1 <= args.views <= args.max_views:
        p.error("--views must be in 1..--max-views")
    return args


def build(which: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)  # same initial weights for both; the baseline loads ours anyway
    ours = ViewFusion(UNet(**PAPER_UNET_KWARGS), Schedule.make())
    if which == "ours":
        return ours.to(device).train()
    baseline = BaselineViewFusion(BaselineUNet(**PAPER_UNET_KWARGS), Schedule.make())
    baseline.load_state_dict(ours.state_dict(), strict=True)
    return baseline.to(device).train()


def make_inputs(args, device: torch.device, batch: int | None = None) -> dict:
    gen = torch.Generator().manual_seed(1)
    b = args.batch if batch is None else batch
    size = PAPER_UNET_KWARGS["image_size"]
    return dict(
        y_0=torch.rand(b, 3, size, size, generator=gen).to(device),
        y_cond=torch.rand(b, args.max_views, 3, size, size, generator=gen).to(device),
        view_count=torch.full((b,), args.views, dtype=torch.long, device=device),
        angle=(torch.randint(0, 24, (b,), generator=gen) * (2 * torch.pi / 24)).to(device),
    )


class Clock:
    """Wall time (synchronising CUDA) or this process's CPU time (exact for one thread)."""

    def __init__(self, kind: str, device: torch.device) -> None:
        self.kind, self.device = kind, device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.process_time() if self.kind == "cpu" else time.perf_counter()


def autocast(args, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")


def loss_step(model, inputs: dict, args, device: torch.device) -> float:
    """Forward + backward of the training loss with a fixed noise draw."""
    generator = torch.Generator(device=device).manual_seed(0)
    with autocast(args, device):
        loss = model.loss(inputs["y_0"], inputs["y_cond"], inputs["view_count"], inputs["angle"], generator=generator)
    loss.backward()
    return loss.item()


def time_training(models: dict, inputs: dict, args, clock: Clock) -> dict[str, list[float]]:
    """Interleaved fwd+bwd timings, so slow phases of a shared machine hit both models alike."""
    device = clock.device
    for model in models.values():  # warm-up: oneDNN primitives, allocator, gradient buffers
        loss_step(model, inputs, args, device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = clock.now()
            loss_step(model, inputs, args, device)
            times[name].append(clock.now() - start)
    return times


def time_train_step(model, inputs: dict, args, clock: Clock) -> float:
    """Forward + backward + Adam (ours only: the optimizer is the same code for both)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        start = clock.now()
        loss_step(model, inputs, args, clock.device)
        opt.step()
        times.append(clock.now() - start)
    return min(times)


@torch.no_grad()
def time_reverse_step(model, inputs: dict, args, clock: Clock) -> float:
    """One composed reverse step (no grad), seconds per U-Net evaluation."""
    b = inputs["y_0"].shape[0]
    t = torch.full((b,), 1000, dtype=torch.long, device=clock.device)
    call = lambda: model.reverse_step_mean(  # noqa: E731
        inputs["y_0"], inputs["y_cond"], inputs["view_count"], inputs["angle"], t
    )
    with autocast(args, clock.device):
        call()
        times = []
        for _ in range(max(2, args.repeats // 2)):
            start = clock.now()
            call()
            times.append(clock.now() - start)
    return min(times) / int(inputs["view_count"].sum())


def time_sampler(model: ViewFusion, args, clock: Clock, sampler: str, steps: int | None) -> float:
    """Seconds per step of one target's sampling loop (the loop `generate` runs)."""
    one = make_inputs(args, clock.device, batch=1)
    model.eval()
    with autocast(args, clock.device):
        loop = model.iter_sample(one["y_cond"], one["view_count"], one["angle"], sampler=sampler,
                                 steps=steps, seeds=[0])
        next(loop)  # warm-up step
        start = clock.now()
        for _ in islice(loop, args.sample_steps):
            pass
        elapsed = clock.now() - start
    model.train()
    return elapsed / args.sample_steps


def count_flops(args, device: torch.device) -> dict[str, float]:
    """FLOPs of one U-Net row: forward, and forward + backward (weights' and input's grads)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    # torch counts SDPA only for its CUDA kernels; the CPU flash kernels have the same cost.
    custom = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
    }
    unet = UNet(**PAPER_UNET_KWARGS).to(device)
    size = PAPER_UNET_KWARGS["image_size"]
    x = torch.randn(1, PAPER_UNET_KWARGS["in_channel"], size, size, device=device)
    angle, gamma = torch.rand(1, device=device), torch.rand(1, device=device)
    with torch.no_grad(), fc.FlopCounterMode(display=False, custom_mapping=custom) as forward:
        unet(x, angle, gamma)
    with fc.FlopCounterMode(display=False, custom_mapping=custom) as both:
        unet(x.requires_grad_(), angle, gamma).sum().backward()
    return {"forward": float(forward.get_total_flops()), "forward_backward": float(both.get_total_flops())}


def gemm_roof_tflops(args, clock: Clock) -> float:
    """A large GEMM's throughput in the run's precision: the practical roof for the convolutions."""
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    a = torch.randn(2048, 2048, device=clock.device, dtype=dtype)
    times = []
    for _ in range(4):
        start = clock.now()
        a @ a
        times.append(clock.now() - start)
    return 2 * 2048**3 / min(times[1:]) / 1e12


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_memory_child(args) -> dict:
    """Runs in a fresh process: the peak extra memory of one forward + backward."""
    device = torch.device(args.device)
    model, inputs = build(args.peak_mem, device), make_inputs(args, device)
    loss_step(model, inputs, args, device)  # warm-up; gradient buffers stay allocated below
    model.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        loss_step(model, inputs, args, device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - before) / 2**20}
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back so RSS is what is live
    before = _proc_status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    loss_step(model, inputs, args, device)
    peak = _proc_status_kb("VmHWM")
    return {"peak_mb": (peak - before) / 1024, "process_peak_mb": peak / 1024, "rss_before_mb": before / 1024}


def measure_peak_memory(which: str, args) -> dict:
    cmd = [sys.executable, __file__, "--peak-mem", which, "--device", args.device, "--dtype", args.dtype,
           "--batch", str(args.batch), "--views", str(args.views), "--max-views", str(args.max_views)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def peak_tflops(args, device: torch.device) -> float | None:
    if args.peak_tflops is not None or device.type != "cuda":
        return args.peak_tflops
    return known_peak(torch.cuda.get_device_name(device), args.dtype)


def describe_config(args, device: torch.device, rows: int) -> dict:
    return {
        "unet": PAPER_UNET_KWARGS, "batch_targets": args.batch, "views_per_target": args.views,
        "max_views": args.max_views, "unet_rows_per_step": rows, "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(), "dtype": args.dtype, "threads": torch.get_num_threads(), "clock": args.clock,
        "repeats": args.repeats, "sample_steps": args.sample_steps, "torch": torch.__version__,
        "load_avg_1min": os.getloadavg()[0], "channels_last": True, "statistic": "min over repeats",
    }


def run(args) -> dict:
    device = torch.device(args.device)
    clock = Clock(args.clock, device)
    memory = {which: measure_peak_memory(which, args) for which in ("ours", "baseline")}
    models = {"ours": build("ours", device), "baseline": build("baseline", device)}
    inputs = make_inputs(args, device)
    rows = int(inputs["view_count"].sum())
    losses = {name: loss_step(m, inputs, args, device) for name, m in models.items()}
    times = time_training(models, inputs, args, clock)
    fwd_bwd = {name: min(ts) for name, ts in times.items()}
    flops = count_flops(args, device)
    ours = models["ours"]
    per_step = {kind: time_sampler(ours, args, clock, kind, steps) for kind, steps in (("ddpm", None), ("ddim", 50))}
    whole = {"ddpm": per_step["ddpm"] * ours.num_timesteps, "ddim": per_step["ddim"] * 50}
    achieved = flops["forward_backward"] * rows / fwd_bwd["ours"] / 1e12
    peak = peak_tflops(args, device)
    return {
        "unet_evals_per_s": rows / fwd_bwd["ours"],
        "baseline_unet_evals_per_s": rows / fwd_bwd["baseline"],
        "speedup_vs_baseline": fwd_bwd["baseline"] / fwd_bwd["ours"],
        "peak_mem_mb": memory["ours"]["peak_mb"],
        "baseline_peak_mem_mb": memory["baseline"]["peak_mb"],
        "peak_mem_ratio": memory["ours"]["peak_mb"] / memory["baseline"]["peak_mb"],
        "ddim50_vs_ddpm2000_speedup": whole["ddpm"] / whole["ddim"],
        "flops_per_unet_eval": flops["forward"],
        "flops_per_unet_eval_fwd_bwd": flops["forward_backward"],
        "train_fwd_bwd_s": fwd_bwd["ours"], "baseline_train_fwd_bwd_s": fwd_bwd["baseline"],
        "train_fwd_bwd_median_s": statistics.median(times["ours"]),
        "baseline_train_fwd_bwd_median_s": statistics.median(times["baseline"]),
        "train_step_s": time_train_step(ours, inputs, args, clock),
        "sample_s_per_unet_eval": time_reverse_step(ours, inputs, args, clock),
        "baseline_sample_s_per_unet_eval": time_reverse_step(models["baseline"], inputs, args, clock),
        "ddpm_step_s_per_target": per_step["ddpm"], "ddim_step_s_per_target": per_step["ddim"],
        "ddpm2000_s_per_target": whole["ddpm"], "ddim50_s_per_target": whole["ddim"],
        "sampler_timing": f"1 target x {args.views} views; per-step cost of each sampler over "
                          f"{args.sample_steps} steps of iter_sample, whole run = per step x steps",
        "achieved_tflops": achieved, "mfu": achieved / peak if peak else None,
        "gemm_roof_tflops": (roof := gemm_roof_tflops(args, clock)), "fraction_of_gemm_roof": achieved / roof,
        "baseline_fraction_of_gemm_roof": flops["forward_backward"] * rows / fwd_bwd["baseline"] / 1e12 / roof,
        "loss_abs_diff_vs_baseline": abs(losses["ours"] - losses["baseline"]),
        "process_peak_mem_mb": memory["ours"].get("process_peak_mb"),
        "baseline_process_peak_mem_mb": memory["baseline"].get("process_peak_mb"),
        "peak_mem_method": "fresh process per model, one fwd+bwd after a warm-up: "
                           + ("VmHWM - VmRSS (clear_refs, malloc_trim)" if device.type == "cpu"
                              else "cuda max_memory_allocated delta"),
        "config": describe_config(args, device, rows),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    result = peak_memory_child(args) if args.peak_mem else run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
