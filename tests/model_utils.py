"""Shared helpers of the model tests: a tiny U-Net, its ViewFusion wrapper, random batches."""

from __future__ import annotations

import math

import torch

from viewfusion.config import unet_channels
from viewfusion.model.diffusion import Schedule
from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import ViewFusion

TINY_UNET = dict(inner_channel=16, norm_groups=8, channel_mults=(1, 2), attn_res=(8,), res_blocks=1, image_size=16)
SCHEDULE = Schedule.make()


def tiny_model(*, weighting=True, relative=False, seed=0, **unet) -> ViewFusion:
    torch.manual_seed(seed)
    in_channel, out_channel = unet_channels(relative=relative, weighting=weighting)
    denoiser = UNet(in_channel=in_channel, out_channel=out_channel, **{**TINY_UNET, **unet})
    return ViewFusion(denoiser, SCHEDULE, weighting=weighting, relative=relative).eval()


def batch(b=4, n=5, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y_t = torch.randn(b, 3, size, size, generator=gen)
    y_cond = torch.rand(b, n, 3, size, size, generator=gen)
    angle = torch.rand(b, generator=gen) * 2 * math.pi
    gamma = torch.rand(b, generator=gen)
    return y_t, y_cond, angle, gamma
