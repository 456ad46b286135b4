"""The model a config describes: U-Net denoiser + noise schedule, composed as ViewFusion.

It lives with the model, not with the config: viewfusion.config is read by the Snakefile, the
planner and the report, none of which may import torch or the model.

    model = build_model(viewfusion.configfile.load_config("config/experiments/tiny.yaml"))
"""

from __future__ import annotations

from viewfusion.config import ExperimentConfig
from viewfusion.model.diffusion import Schedule
from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import ViewFusion


def build_model(cfg: ExperimentConfig) -> ViewFusion:
    """The ViewFusion model (U-Net denoiser + noise schedule) that `cfg` describes."""
    m, d = cfg.model, cfg.diffusion
    schedule = Schedule.make(d.schedule, d.n_timestep, linear_start=d.linear_start,
                             linear_end=d.linear_end)
    return ViewFusion(UNet(**m.unet_kwargs()), schedule, weighting=m.weighting,
                      relative=m.relative, clamp=m.clamp, prediction=d.prediction)
