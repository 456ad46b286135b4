"""Weight compatibility with the official release: goldens produced by the official code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from viewfusion.model.checkpoint import load_official
from viewfusion.model.diffusion import Schedule
from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import ViewFusion

# Vendored copies (tests/reference/README.md) of ../shared/reference beside the checkout.
REFERENCE = Path(__file__).resolve().parent / "reference"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden():
    return torch.load(REFERENCE / "golden_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden):
    sched = golden["beta_schedule_train"]
    schedule = Schedule.make(
        sched["schedule"], sched["num_timesteps"],
        linear_start=sched["linear_start"], linear_end=sched["linear_end"],
    )
    model = ViewFusion(UNet(**golden["unet_kwargs"]), schedule)
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


def test_golden_schedule_buffers_equal_ours(golden, golden_model):
    # Our float64 schedule, cast like the official code, gives the stored buffers.
    sched = golden["beta_schedule_train"]
    ours = Schedule.make("linear", sched["num_timesteps"], linear_start=sched["linear_start"],
                         linear_end=sched["linear_end"]).buffers()
    for name, value in ours.items():
        torch.testing.assert_close(value, golden["state_dict"][name], rtol=1e-6, atol=0, msg=name)


def test_golden_denoiser_output(golden, golden_model):
    inputs = golden["denoiser_inputs"]
    with torch.no_grad():
        out = golden_model.denoiser(inputs["x"], inputs["angle"], inputs["noise_level"])
        out_flat = golden_model.denoiser(inputs["x"], inputs["angle"][:, 0], inputs["noise_level"][:, 0])
    torch.testing.assert_close(out, golden["denoiser_output"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_flat, out, atol=0, rtol=0)


def test_golden_reverse_step(golden, golden_model):
    inputs, expected = golden["p_mean_variance_inputs"], golden["p_mean_variance_outputs"]
    assert inputs["clip_denoised"] and golden_model.clamp == (-1.0, 1.0)
    with torch.no_grad():
        mean, log_var, weights = golden_model.reverse_step_mean(
            inputs["y_t"], inputs["y_cond"], inputs["view_count"], inputs["angle"], inputs["t"]
        )
    torch.testing.assert_close(mean, expected["model_mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(log_var, expected["posterior_log_variance_clipped"], atol=1e-5, rtol=0)
    n_max = expected["weights_softmax"].shape[1]
    torch.testing.assert_close(weights[:, :n_max], expected["weights_softmax"], atol=1e-5, rtol=0)
    assert weights[:, n_max:].abs().max() == 0  # the 20 unused views of y_cond get no weight


@pytest.mark.parametrize("ddp_prefix", [False, True])
def test_load_official_infers_config_from_golden(golden, tmp_path, ddp_prefix):
    # The official file's layout: numpy psnr/ssim scalars beside the weights (which a plain
    # weights_only load refuses), and the DDP wrapper's `module.` prefix on multi-GPU runs.
    path = tmp_path / "official.pt"
    state = {("module." if ddp_prefix else "") + k: v for k, v in golden["state_dict"].items()}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "it": 3, "t": 1.5,
                "run_id": "abc", "psnr": np.float64(23.5), "ssim": np.float32(0.88)}, path)
    kwargs = {k: v for k, v in golden["unet_kwargs"].items() if k not in ("in_channel", "out_channel")}
    model = load_official(path, kwargs)
    assert model.weighting and not model.relative and not model.training
    inputs = golden["denoiser_inputs"]
    with torch.no_grad():
        out = model.denoiser(inputs["x"], inputs["angle"], inputs["noise_level"])
    torch.testing.assert_close(out, golden["denoiser_output"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["paper", "no_weighting", "relative"])
def test_paper_config_matches_manifest(variant):
    manifest = json.loads((REFERENCE / "official_state_dict_manifest.json").read_text())[variant]
    model = ViewFusion(
        UNet(**manifest["unet_kwargs"]), Schedule.make(),
        weighting=variant != "no_weighting", relative=variant == "relative",
    )
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert list(ours) == list(manifest["state_dict"])  # same names, same order
    assert ours == manifest["state_dict"]
