"""train.precision: the choice by device capability, the former train.bf16 key, and the fp16 +
gradient-scaler path run for real on CPU (torch's CPU autocast takes float16, GradScaler('cpu'))."""

from __future__ import annotations

import math

import pytest
import torch
from train_utils import TINY, assert_same_weights, load, make_shards, metrics, run_train

from viewfusion import config as C
from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.train import state as trainstate


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.getbasetemp() / "train-shards")


@pytest.mark.parametrize("requested, device, bf16_cores, expected", [
    ("auto", "cuda", True, "bf16"),    # A100, H100, L40S: compute capability 8.0+
    ("auto", "cuda", False, "fp16"),   # V100 (sm70), T4 (sm75): fp16 tensor cores, bf16 emulated
    ("auto", "cpu", False, "fp32"),    # CPU unless asked
    ("auto", "cpu", True, "fp32"),     # the flag only speaks of CUDA tensor cores
    ("bf16", "cuda", False, "bf16"),   # asked: kept (train warns that it is emulated)
    ("bf16", "cpu", False, "bf16"),
    ("fp16", "cuda", True, "fp16"),
    ("fp16", "cpu", False, "fp16"),
    ("fp32", "cuda", True, "fp32"),    # the official code's precision
])
def test_selection_is_a_pure_function_of_the_device(requested, device, bf16_cores, expected):
    precision, reason = C.select_precision(requested, device_type=device, bf16_tensor_cores=bf16_cores)
    assert precision == expected and reason
    assert ("auto" in reason) == (requested == "auto")


def test_selection_refuses_unknown_precisions():
    with pytest.raises(ValueError, match="'fp8' is not one of auto, bf16, fp16, fp32"):
        C.select_precision("fp8", device_type="cuda")
    with pytest.raises(ViewFusionError, match="train.precision 'half' is not one of"):
        load_config(TINY, ["train.precision=half"])


def test_the_paper_config_is_auto_and_the_former_bf16_key_still_loads(tmp_path):
    assert load_config(TINY.parent / "paper.yaml").train.precision == "auto"
    assert C.TrainConfig().precision == "auto"
    assert load_config(TINY, ["train.bf16=true"]).train.precision == "bf16"
    assert load_config(TINY, ["train.bf16=false"]).train.precision == "fp32"
    # A checkpoint's config dict written before the key changed.
    old = C.to_dict(C.ExperimentConfig())
    del old["train"]["precision"]
    old["train"]["bf16"] = True
    assert C.from_dict(old).train.precision == "bf16"
    both = tmp_path / "both.yaml"
    both.write_text(f"base: {TINY}\ntrain:\n  bf16: true\n  precision: fp32\n")
    with pytest.raises(ViewFusionError, match="train.bf16 and train.precision both given"):
        load_config(both)


def test_resolve_on_this_machine_is_fp32_on_cpu_and_autocast_matches():
    cpu = torch.device("cpu")
    assert trainstate.resolve_precision("auto", cpu) == "fp32"
    assert trainstate.resolve_precision("fp16", cpu) == "fp16"
    with trainstate.autocast_for("fp16", cpu):
        assert torch.get_autocast_dtype("cpu") == torch.float16 and torch.is_autocast_enabled("cpu")
    with trainstate.autocast_for("bf16", cpu):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with trainstate.autocast_for("fp32", cpu):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
def test_fp16_with_gradient_scaler_trains_checkpoints_and_resumes_on_cpu(shards, tmp_path):
    """The V100 path on CPU: fp16 autocast, GradScaler('cpu') with clipping (unscale first); the
    scaler's state is in the checkpoint and a resume continues it exactly."""
    sets = ("train.precision=fp16", "train.grad_clip=1.0")
    straight = tmp_path / "straight"
    res = run_train(shards, straight, "train.max_steps=6", *sets)
    assert res.returncode == 0, res.stderr
    assert "precision: fp16 (train.precision fp16)" in res.stdout
    final = load(straight / "final.pt")
    assert final["precision"] == "fp16" and final["config"]["train"]["precision"] == "fp16"
    scaler = final["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 1, scaler
    assert all(bool(t.isfinite().all()) for t in final["model"].values() if t.is_floating_point())
    assert all(math.isfinite(r["loss"]) for r in metrics(straight) if "loss" in r)

    # Stop at step 3 (a periodic checkpoint), then resume to 6: the same weights and scale.
    resumed = tmp_path / "resumed"
    assert run_train(shards, resumed, "train.max_steps=3", *sets).returncode == 0
    again = run_train(shards, resumed, "train.max_steps=6", *sets)
    assert again.returncode == 0 and "at step 3" in again.stdout, again.stderr
    assert_same_weights(load(resumed / "final.pt"), final)
    assert load(resumed / "final.pt")["scaler"] == scaler


@pytest.mark.slow
def test_fp32_checkpoints_carry_no_scaler(shards, tmp_path):
    res = run_train(shards, tmp_path / "run", "train.max_steps=1")
    assert res.returncode == 0, res.stderr
    final = load(tmp_path / "run" / "final.pt")
    assert final["precision"] == "fp32" and final["scaler"] is None
    assert "precision: fp32 (auto: cpu device)" in res.stdout
