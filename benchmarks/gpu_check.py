"""What a GPU does for this project, in under 10 minutes: one JSON and one PNG in --out.

Run it through benchmarks/gpu_check.sh (which installs the project from wheels first):

    benchmarks/gpu_check.sh OUT_DIR            # a CUDA machine: the paper model, ~9 minutes
    benchmarks/gpu_check.sh OUT_DIR --smoke    # any machine, CPU too: a tiny model, seconds

Measured, in this order (each phase's seconds are in "timings"):
1. U-Net throughput of the paper model (64 px): forward + backward of the training loss
   (28 targets x 3 views = 84 U-Net rows, the paper's per-GPU batch) in fp32, bf16 and fp16
   autocast, and the sampler's forward pass (one composed reverse step, 64 targets x 4 views
   = 256 rows) in fp32 and bf16; U-Net evaluations/s, TFLOP/s (FLOPs counted by
   torch.utils.flop_counter on one row) and MFU against the GPU's dense peak (peaks.py).
2. torch.compile (inductor; --smoke: the eager backend, to run the code path in seconds): the
   compile time and the gain on the bf16 forward + backward step.
3. Training: the paper config in bf16 at its per-GPU batch of 28 (--smoke: the tiny config in
   fp32) on synthetic data (viewfusion data synth, 260 objects -> shards -> the trainer's own
   loader, build, step and optimizer step) for --train-minutes of wall time; the loss curve.
4. At the end: DDIM-50 samples of the trained weights on seeded test targets (3 views),
   PSNR against the ground truth beside the copy baseline (nearest conditioning view), and
   DDIM-50 targets/s in the sampler's precision (fp32, as `viewfusion sample` runs).
"plan_rates" holds the rates `viewfusion plan --rates OUT/gpu_check.json` takes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

from peaks import peak_tflops  # noqa: E402

import viewfusion  # noqa: E402
from viewfusion.configfile import load_config  # noqa: E402
from viewfusion.data.manifest import make_manifest  # noqa: E402
from viewfusion.data.reader import load_objects  # noqa: E402
from viewfusion.data.shard import write_shards  # noqa: E402
from viewfusion.data.synth import write_synth_zip  # noqa: E402
from viewfusion.evaluate.targets import build_batch, nearest_view_images  # noqa: E402
from viewfusion.model.build import build_model  # noqa: E402
from viewfusion.train import distributed  # noqa: E402
from viewfusion.train import loop as train  # noqa: E402
from viewfusion.train import state as trainstate  # noqa: E402

CONFIGS = HERE.parent / "config" / "experiments"  # the checkout's (the wheel holds the package only)
# The tiny CPU smoke model: 32 px, 16 channels, a 100-step schedule (tests/train_utils.py SMALL).
SMOKE = ["model.image_size=32", "model.inner_channel=16", "model.channel_mults=[1, 2]", "model.norm_groups=8",
         "model.res_blocks=1", "model.attn_res=[]", "diffusion.n_timestep=100", "data.max_views=3",
         "data.num_workers=0", "train.global_batch_size=4", "train.warmup_steps=5"]
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.png")
    p.add_argument("--smoke", action="store_true", help="tiny model, seconds, CPU allowed (tests the script)")
    p.add_argument("--train-minutes", type=float, default=None, help="training wall time (default 5; smoke 0.1)")
    p.add_argument("--budget-minutes", type=float, default=9.5,
                   help="stop optional phases (compile) when the whole run would pass this")
    p.add_argument("--configs", type=Path, default=CONFIGS, help="config/experiments folder (default: the checkout's)")
    return p.parse_args(argv)


class Timer:
    def __init__(self, device: torch.device):
        self.device, self.start = device, time.perf_counter()

    def sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def autocast(dtype: str, device: torch.device):
    return nullcontext() if DTYPES[dtype] is None else torch.autocast(device.type, dtype=DTYPES[dtype])


def gpu_class(name: str) -> str:
    """The GPU class `viewfusion plan` knows (peaks per class there), from the device name."""
    for key in ("V100", "A100", "L40S", "H100", "H200"):
        if key in name:
            return key.lower()
    return "cpu" if name == "cpu" else "unknown"


def flops_per_row(model, cfg, device: torch.device) -> dict[str, float]:
    """FLOPs of one U-Net row (torch.utils.flop_counter): forward, and forward + backward."""
    from torch.utils import flop_counter as fc

    size = cfg.model.image_size
    x = torch.randn(1, cfg.model.in_channel, size, size, device=device)
    angle, gamma = torch.rand(1, device=device), torch.rand(1, device=device)
    with torch.no_grad(), fc.FlopCounterMode(display=False) as fwd:
        model.denoise_fn(x, angle, gamma)
    with fc.FlopCounterMode(display=False) as both:
        model.denoise_fn(x.requires_grad_(), angle, gamma).sum().backward()
    model.zero_grad(set_to_none=True)
    return {"forward": float(fwd.get_total_flops()), "forward_backward": float(both.get_total_flops())}


def inputs(cfg, device: torch.device, targets: int, views: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    size, vmax = cfg.model.image_size, cfg.data.max_views
    views = min(views, vmax)
    out = {"y_0": torch.rand(targets, 3, size, size, generator=gen), "y_cond": torch.rand(targets, vmax, 3, size, size,
                                                                                        generator=gen),
           "view_count": torch.full((targets,), views, dtype=torch.long),
           "angle": torch.randint(0, 24, (targets,), generator=gen).float() * (2 * math.pi / 24)}
    return {k: v.to(device) for k, v in out.items()}


def time_calls(call, timer: Timer, *, min_seconds: float, max_calls: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    timer.sync()
    start, n = time.perf_counter(), 0
    while n < max_calls and (n < 2 or time.perf_counter() - start < min_seconds):
        call()
        n += 1
    return (timer.sync() - start) / n


def throughput(model, cfg, device, timer: Timer, flops: dict, smoke: bool, peak_name: str) -> dict:
    """U-Net evaluations/s, TFLOP/s and MFU of training (fwd+bwd) and sampling (forward) steps."""
    train_in = inputs(cfg, device, 4 if smoke else 28, 3)
    sample_in = inputs(cfg, device, 4 if smoke else 64, 4)
    rows_train, rows_sample = int(train_in["view_count"].sum()), int(sample_in["view_count"].sum())
    t = torch.full((sample_in["y_0"].shape[0],), model.num_timesteps // 2, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    out: dict = {"train_fwd_bwd": {}, "sample_forward": {}, "rows": {"train": rows_train, "sample": rows_sample}}
    budget = {"min_seconds": 0.2 if smoke else 3.0, "max_calls": 3 if smoke else 50}
    for dtype in ("fp32", "bf16", "fp16"):
        if device.type == "cpu" and dtype == "fp16" and not smoke:
            continue

        def step(dtype=dtype):
            gen.manual_seed(0)
            model.zero_grad(set_to_none=True)
            with autocast(dtype, device):
                loss = model.loss(train_in["y_0"], train_in["y_cond"], train_in["view_count"], train_in["angle"],
                                  generator=gen)
            loss.backward()

        seconds = time_calls(step, timer, **budget)
        out["train_fwd_bwd"][dtype] = _rate(rows_train / seconds, flops["forward_backward"], peak_name, dtype)
    model.zero_grad(set_to_none=True)
    for dtype in ("fp32", "bf16"):
        def forward(dtype=dtype):
            with torch.no_grad(), autocast(dtype, device):
                model.reverse_step_mean(sample_in["y_0"], sample_in["y_cond"], sample_in["view_count"],
                                        sample_in["angle"], t)

        seconds = time_calls(forward, timer, **budget)
        out["sample_forward"][dtype] = _rate(rows_sample / seconds, flops["forward"], peak_name, dtype)
    return out


def _rate(evals_per_s: float, flops: float, device_name: str, dtype: str) -> dict:
    achieved = evals_per_s * flops / 1e12
    # fp16 runs on the same tensor cores as bf16 (peaks.py lists bf16 and fp32).
    peak = peak_tflops(device_name, "fp32" if dtype == "fp32" else "bf16") if device_name != "cpu" else None
    return {"unet_evals_per_s": evals_per_s, "tflops": achieved, "mfu": achieved / peak if peak else None,
            "peak_tflops": peak}


def compile_gain(model, cfg, device, timer: Timer, smoke: bool) -> dict:
    """Eager against torch.compile on the bf16 forward + backward step (fp32 on CPU)."""
    dtype = "bf16" if device.type == "cuda" else "fp32"
    backend = "eager" if smoke else "inductor"
    batch = inputs(cfg, device, 4 if smoke else 28, 3)
    gen = torch.Generator(device=device)

    def make_step(unet):
        def step():
            model.denoise_fn = unet
            gen.manual_seed(0)
            with autocast(dtype, device):
                loss = model.loss(batch["y_0"], batch["y_cond"], batch["view_count"], batch["angle"], generator=gen)
            loss.backward()
        return step

    eager_unet = model.denoise_fn
    budget = {"min_seconds": 0.2 if smoke else 3.0, "max_calls": 3 if smoke else 50}
    eager = time_calls(make_step(eager_unet), timer, **budget)
    compiled_unet = torch.compile(eager_unet, backend=backend)
    start = timer.sync()
    make_step(compiled_unet)()  # the first call compiles
    compile_s = timer.sync() - start
    compiled = time_calls(make_step(compiled_unet), timer, **budget)
    model.denoise_fn = eager_unet
    model.zero_grad(set_to_none=True)
    return {"backend": backend, "dtype": dtype, "compile_s": compile_s, "eager_s_per_step": eager,
            "compiled_s_per_step": compiled, "gain": eager / compiled}


def make_data(work: Path, smoke: bool) -> Path:
    size = 32 if smoke else 64
    zip_path, shards = work / "synth.zip", work / "shards"
    write_synth_zip(zip_path, objects=26 if smoke else 260, seed=0, image_size=size,
                    workers=1 if smoke else min(8, os.cpu_count() or 1))
    write_shards(zip_path, shards, shards=2 if smoke else 8, gpus=1, image_size=size)
    return shards


def train_for(cfg, shards: Path, device: torch.device, seconds: float) -> tuple[object, dict]:
    """The trainer's own pieces (build, loader, step, optimizer step) for `seconds` of wall time."""
    d = distributed.Dist(rank=0, world_size=1, local_rank=0, device=device)
    state = trainstate.build(cfg, d)
    stream = train._data_stream(cfg, d, shards, cfg.train.global_batch_size, 0)
    curve, losses, start = [], [], time.perf_counter()
    every = max(1, cfg.train.log_every)
    with train._StopSignals() as stop:
        while time.perf_counter() - start < seconds or state.step == 0:
            batch = next(stream)
            loss, _, _ = train._step(state, batch, trainstate.autocast_for(state.precision, device), cfg.train, d, stop,
                                     poison=False)
            train._optimizer_step(state)
            losses.append(loss)
            if state.step % every == 0:
                curve.append([state.step, round(time.perf_counter() - start, 2), float(np.mean(losses[-every:]))])
    elapsed = time.perf_counter() - start
    if not curve or curve[-1][0] != state.step:
        curve.append([state.step, round(elapsed, 2), float(np.mean(losses[-every:]))])
    info = {"precision": state.precision, "seconds": elapsed, "steps": state.step,
            "samples_per_s": state.step * cfg.train.global_batch_size / elapsed,
            "global_batch_size": cfg.train.global_batch_size, "curve": curve,
            "final_loss": float(np.mean(losses[-min(len(losses), 50):]))}
    return state.model, info


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR (images in [0, 1])."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def evaluate(model, shards: Path, device: torch.device, timer: Timer, smoke: bool) -> dict:
    """DDIM-50 (eta 0) samples of seeded test targets with 3 views, against the copy baseline."""
    manifest = make_manifest(shards, split="test", view_count=3, seed=0, max_objects=4 if smoke else 64)
    items = manifest["items"]
    objects = load_objects(shards, "test", sorted({it["key"] for it in items}))
    batch = build_batch(items, objects, relative=model.relative, device=device)
    gt = torch.stack([objects[it["key"]].images[it["target_view"]] for it in items])
    model.eval()
    model.row_batch = 64 if device.type == "cuda" else 8
    steps = 5 if smoke else 50
    kwargs = {"y_ref": batch["y_ref"]} if "y_ref" in batch else {}
    with torch.inference_mode():
        model.generate(batch["y_cond"][:1], batch["view_count"][:1], batch["angle"][:1], sampler="ddim", steps=2,
                       seeds=batch["seeds"][:1], **{k: v[:1] for k, v in kwargs.items()})  # warm-up
        start = timer.sync()
        images = model.generate(batch["y_cond"], batch["view_count"], batch["angle"], sampler="ddim", steps=steps,
                                eta=0.0, seeds=batch["seeds"], **kwargs)
        seconds = timer.sync() - start
    return {"targets": len(items), "views": 3, "sampler": f"ddim-{steps}", "precision": "fp32",
            "psnr": psnr(images.cpu(), gt), "copy_baseline_psnr": psnr(nearest_view_images(items, objects), gt),
            "seconds": seconds, "targets_per_s": len(items) / seconds}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    thr = result.get("throughput", {})
    ax = axes[0, 0]
    labels, values, notes = [], [], []
    for kind, rows in (("train fwd+bwd", thr.get("train_fwd_bwd", {})), ("sample fwd", thr.get("sample_forward", {}))):
        for dtype, r in rows.items():
            labels.append(f"{kind}\n{dtype}")
            values.append(r["unet_evals_per_s"])
            notes.append("" if r["mfu"] is None else f"MFU {100 * r['mfu']:.0f}%")
    bars = ax.bar(range(len(values)), values, color="tab:blue")
    for bar, note in zip(bars, notes):
        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("U-Net evaluations / s")
    ax.set_title(f"{result['env']['device']}: U-Net throughput")
    ax = axes[0, 1]
    curve = result.get("training", {}).get("curve", [])
    if curve:
        ax.plot([c[1] for c in curve], [c[2] for c in curve], color="tab:orange")
    ax.set_xlabel("seconds")
    ax.set_ylabel("training loss")
    tr = result.get("training", {})
    ax.set_title(f"{tr.get('precision', '?')} training: {tr.get('steps', 0)} steps, "
                 f"{tr.get('samples_per_s', 0):.0f} samples/s")
    ax = axes[1, 0]
    ev = result.get("evaluation", {})
    if ev:
        ax.bar([ev["sampler"], "copy baseline"], [ev["psnr"], ev["copy_baseline_psnr"]],
               color=["tab:green", "tab:gray"])
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{ev['targets']} test targets, {ev['views']} views; {ev['targets_per_s']:.1f} targets/s")
    ax = axes[1, 1]
    comp = result.get("compile", {})
    if comp.get("gain"):
        ax.bar(["eager", f"compiled ({comp['backend']})"], [comp["eager_s_per_step"], comp["compiled_s_per_step"]],
               color=["tab:gray", "tab:purple"])
        ax.set_ylabel("s per fwd+bwd step")
        ax.set_title(f"torch.compile: {comp['gain']:.2f}x, compile {comp['compile_s']:.0f} s")
    else:
        ax.set_title(f"torch.compile: {comp.get('skipped', 'not run')}")
    fig.suptitle(f"viewfusion gpu_check {'(smoke) ' if result['smoke'] else ''}{result['env']['started']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = args.configs
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("gpu_check: no CUDA device; --smoke runs the tiny CPU version", file=sys.stderr)
        return 2
    timer = Timer(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    env = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "device": name,
           "gpu_class": gpu_class(name), "torch": torch.__version__, "cuda": torch.version.cuda,
           "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
           "python": platform.python_version(), "viewfusion": viewfusion.__file__, "cpus": os.cpu_count()}
    result: dict = {"env": env, "smoke": args.smoke, "timings": {}}
    json_path, png_path = args.out / "gpu_check.json", args.out / "gpu_check.png"

    def phase(key: str, fn):
        start = time.perf_counter()
        print(f"gpu_check: {key} ...", flush=True)
        value = fn()
        result["timings"][key] = round(time.perf_counter() - start, 2)
        json_path.write_text(json.dumps(result, indent=1))  # what is done so far survives a kill
        return value

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # The paper model at its per-GPU batch (28: 112 over the paper's 4 GPUs, what one GPU holds
    # and computes in the paper's run), loader workers enough to keep one fast GPU fed.
    base = ["train.precision=" + ("bf16" if device.type == "cuda" else "fp32"), "train.checkpoint_every=100000",
            "train.log_every=1" if args.smoke else "train.log_every=10"]
    if not args.smoke:
        base += ["train.global_batch_size=28", f"data.num_workers={min(8, max(1, (os.cpu_count() or 2) // 2))}"]
    cfg = load_config(configs / ("tiny.yaml" if args.smoke else "paper.yaml"), base + (SMOKE if args.smoke else []))
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    result["unet"] = {"config": "tiny (smoke)" if args.smoke else "paper",
                      "params": sum(p.numel() for p in model.denoise_fn.parameters()),
                      **{f"flops_{k}": v for k, v in flops_per_row(model, cfg, device).items()}}
    flops = {"forward": result["unet"]["flops_forward"], "forward_backward": result["unet"]["flops_forward_backward"]}
    result["throughput"] = phase("throughput", lambda: throughput(model, cfg, device, timer, flops, args.smoke, name))
    train_minutes = args.train_minutes if args.train_minutes is not None else (0.1 if args.smoke else 5.0)
    reserve = 60 * train_minutes + (10 if args.smoke else 90)  # training, data and the evaluation still to come
    if timer.elapsed() + reserve + (5 if args.smoke else 150) < 60 * args.budget_minutes:
        result["compile"] = phase("compile", lambda: compile_gain(model, cfg, device, timer, args.smoke))
    else:
        result["compile"] = {"skipped": f"no time left within --budget-minutes {args.budget_minutes}"}
    model = None  # free its memory before training builds its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shards = phase("data", lambda: make_data(args.out / "data", args.smoke))
    trained, result["training"] = phase("training", lambda: train_for(cfg, shards, device, 60 * train_minutes))
    result["evaluation"] = phase("evaluation", lambda: evaluate(trained, shards, device, timer, args.smoke))
    thr = result["throughput"]
    result["plan_rates"] = {"gpu": env["gpu_class"], "source": "benchmarks/gpu_check.py",
                            "sample": thr["sample_forward"]["fp32"]["unet_evals_per_s"],
                            "train": {k: v["unet_evals_per_s"] for k, v in thr["train_fwd_bwd"].items()}}
    result["total_s"] = round(timer.elapsed(), 1)
    json_path.write_text(json.dumps(result, indent=1))
    plot(result, png_path)
    ev, tr = result["evaluation"], result["training"]
    print(json.dumps({"device": name, "total_s": result["total_s"],
                      "train_bf16_evals_per_s": thr["train_fwd_bwd"].get("bf16", {}).get("unet_evals_per_s"),
                      "sample_fp32_evals_per_s": result["plan_rates"]["sample"],
                      "compile_gain": result["compile"].get("gain"), "training_steps": tr["steps"],
                      "final_loss": tr["final_loss"], "psnr": ev["psnr"], "copy_psnr": ev["copy_baseline_psnr"],
                      "ddim_targets_per_s": ev["targets_per_s"], "json": str(json_path), "png": str(png_path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
