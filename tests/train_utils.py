"""Shared by the training and sampling tests: small synthetic shards, a 32 px model, subprocess
runs, and a random-weight 64 px checkpoint for sampling."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "experiments" / "tiny.yaml"
TRAIN_SH = ROOT / "workflow" / "scripts" / "train.sh"  # the workflow's training launcher
# A 32 px, 16-channel U-Net: a training step takes a fraction of a second on one core.
SMALL = ["model.image_size=32", "model.inner_channel=16", "model.channel_mults=[1, 2]",
         "model.norm_groups=8", "model.res_blocks=1", "diffusion.n_timestep=100",
         "data.max_views=3", "data.num_workers=0", "train.global_batch_size=4",
         "train.checkpoint_every=3", "data.stream_segment=3", "train.log_every=1", "train.snapshot_steps=[]",
         "train.warmup_steps=5"]
# A random-weight 64 px model for the sampling tests: determinism does not depend on training.
SAMPLE_SMALL = ["model.inner_channel=16", "model.channel_mults=[1, 2]", "model.norm_groups=8",
                "model.res_blocks=1", "model.attn_res=[]", "diffusion.n_timestep=100"]


def save_random_model(path: Path, *, step: int, edit=None, sets=()) -> Path:
    """A checkpoint of the tiny config with `SAMPLE_SMALL` (then `sets`) and seed-0 random weights;
    `edit(model)` may change the weights before saving."""
    from viewfusion.config import to_dict
    from viewfusion.configfile import load_config
    from viewfusion.model import checkpoint
    from viewfusion.model.build import build_model

    cfg = load_config(TINY, [*SAMPLE_SMALL, *sets])
    torch.manual_seed(0)
    model = build_model(cfg)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    checkpoint.save(path, {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
                           "model": model.state_dict(), "step": step, "config": to_dict(cfg)})
    return path


def make_shards(out: Path) -> Path:
    """26 synthetic objects at 32 px in 2 train shards (cached: built once per test session)."""
    if (out / "manifest.json").exists():
        return out
    zip_path = out.parent / f"{out.name}.zip"
    cli = [sys.executable, "-m", "viewfusion.cli", "data"]
    subprocess.run(cli + ["synth", "--objects", "26", "--image-size", "32", "--workers", "1",
                          "--out", str(zip_path)], check=True, capture_output=True)
    subprocess.run(cli + ["shard", "--zip", str(zip_path), "--out", str(out), "--shards", "2",
                          "--gpus", "2", "--image-size", "32"], check=True, capture_output=True)
    return out


def train_argv(shards: Path, out: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", str(TINY), "--shards", str(shards), "--out", str(out), "--device", "cpu"]
    for s in [*SMALL, *sets]:
        argv += ["--set", s]
    return argv


def env(**extra: str) -> dict[str, str]:
    # One thread per process: the 2 cores are shared, and results must not depend on timing.
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run_train(shards: Path, out: Path, *sets: str, nproc: int = 0, **env_extra: str):
    """`viewfusion train` (or torchrun with `nproc` processes) to completion."""
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "viewfusion.cli"]
    else:
        cmd = [sys.executable, "-m", "viewfusion.cli"]
    return subprocess.run(cmd + train_argv(shards, out, *sets), check=False, capture_output=True, text=True,
                          env=env(**env_extra), timeout=600)


def start_train(shards: Path, out: Path, *sets: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "viewfusion.cli", *train_argv(shards, out, *sets)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {path} appeared:\n"
                                 f"{proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def flip_weight_bit(path: Path, name: str = "denoise_fn.downs.0.weight", *, ema: bool = False) -> None:
    """Flip one bit in the stored bytes of weight `name` (of the EMA weights with ema=True) in
    place, as a failing disk or a bad copy would: torch.load checks no CRC, so the file still loads."""
    tensor = (load(path)["ema"]["model"] if ema else load(path)["model"])[name]
    data = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tobytes()  # as stored
    with zipfile.ZipFile(path) as archive:
        found = [i for i in archive.infolist() if "/data/" in i.filename and archive.read(i) == data]
    assert len(found) == 1, f"{name} is not stored once, on its own, in {path}"
    raw = bytearray(path.read_bytes())
    start = found[0].header_offset  # local header: 30 bytes, the name, the extra field, then the data
    name_len, extra_len = struct.unpack("<HH", raw[start + 26 : start + 30])
    raw[start + 30 + name_len + extra_len + len(data) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict) -> None:
    """Model, EMA and optimizer state bit-identical."""
    assert a["step"] == b["step"]
    for name in ("model",):
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), f"{name}.{key} differs"
    for key, value in a["ema"]["model"].items():
        assert torch.equal(value, b["ema"]["model"][key]), f"ema.{key} differs"
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])
