"""Benchmark baseline: ViewFusion written the straightforward way the official code is.

Only for `benchmarks/model.py`; never imported by the package. Same parameter names and
numbers as `viewfusion.model` (it loads the same state dict), but it runs as the official
implementation does:

* attention materialises the full (HW x HW) score tensor with einsum, then softmax, then einsum;
* Swish is `x * sigmoid(x)` (autograd keeps the input, the sigmoid and the product);
* composition gathers each target's views with a Python loop over the batch
  (`torch.cat` of per-sample slices, `repeat_interleave`), and pads logits and noise back per
  sample with `pad_sequence` before the softmax over views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from viewfusion.model.diffusion import Schedule, add_noise, sample_continuous_gamma


class Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def encode(value: Tensor, dim: int) -> Tensor:
    count = dim // 2
    step = torch.arange(count, dtype=value.dtype, device=value.device) / count
    enc = value.unsqueeze(1) * torch.exp(-math.log(1e4) * step.unsqueeze(0))
    return torch.cat([torch.sin(enc), torch.cos(enc)], dim=-1)


class Block(nn.Module):
    def __init__(self, dim, dim_out, groups, dropout=0.0):
        super().__init__()
        drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.block = nn.Sequential(nn.GroupNorm(groups, dim), Swish(), drop, nn.Conv2d(dim, dim_out, 3, padding=1))

    def forward(self, x):
        return self.block(x)


class Affine(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(dim_in, dim_out))

    def forward(self, x, emb):
        return x + self.noise_func(emb).view(x.shape[0], -1, 1, 1)


class ResBlock(nn.Module):
    def __init__(self, dim, dim_out, emb_dim, groups, dropout):
        super().__init__()
        self.noise_func = Affine(emb_dim, dim_out)
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, emb):
        return self.block2(self.noise_func(self.block1(x), emb)) + self.res_conv(x)


class EinsumAttention(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 1, 3 * c, h, w).chunk(3, dim=2)
        scores = torch.einsum("bnchw, bncyx -> bnhwyx", q, k).contiguous() / math.sqrt(c)
        probs = torch.softmax(scores.view(b, 1, h, w, -1), -1).view(b, 1, h, w, h, w)
        out = torch.einsum("bnhwyx, bncyx -> bnchw", probs, v).contiguous()
        return self.out(out.view(b, c, h, w)) + x


class ResAttn(nn.Module):
    def __init__(self, dim, dim_out, *, emb_dim, groups, dropout, with_attn):
        super().__init__()
        self.with_attn = with_attn
        self.res_block = ResBlock(dim, dim_out, emb_dim, groups, dropout)
        if with_attn:
            self.attn = EinsumAttention(dim_out, groups)

    def forward(self, x, emb):
        x = self.res_block(x, emb)
        return self.attn(x) if self.with_attn else x


class Down(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        return self.conv(self.up(x))


class BaselineUNet(nn.Module):
    def __init__(self, *, in_channel=6, out_channel=6, inner_channel=64, norm_groups=32,
                 channel_mults=(1, 2, 3, 5), attn_res=(16,), res_blocks=3, dropout=0.0, image_size=64):
        super().__init__()
        self.inner = inner_channel
        self.noise_level_mlp = nn.Sequential(
            nn.Linear(inner_channel, inner_channel * 4), Swish(), nn.Linear(inner_channel * 4, inner_channel)
        )
        blk = dict(emb_dim=inner_channel, groups=norm_groups, dropout=dropout)
        downs = [nn.Conv2d(in_channel, inner_channel, 3, padding=1)]
        feats, pre, res = [inner_channel], inner_channel, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                downs.append(ResAttn(pre, inner_channel * mult, with_attn=res in attn_res, **blk))
                pre = inner_channel * mult
                feats.append(pre)
            if level != len(channel_mults) - 1:
                downs.append(Down(pre))
                feats.append(pre)
                res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([ResAttn(pre, pre, with_attn=True, **blk), ResAttn(pre, pre, with_attn=False, **blk)])
        ups = []
        for level in reversed(range(len(channel_mults))):
            for _ in range(res_blocks + 1):
                out = inner_channel * channel_mults[level]
                ups.append(ResAttn(pre + feats.pop(), out, with_attn=res in attn_res, **blk))
                pre = out
            if level:
                ups.append(Up(pre))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(pre, out_channel, norm_groups)

    def forward(self, x, angle, noise_level):
        # (B, 1) inputs, as the official code requires.
        emb = torch.cat((encode(noise_level, self.inner // 2), encode(angle, self.inner // 2)), dim=-1)
        emb = self.noise_level_mlp(emb).view(x.shape[0], -1)
        feats = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            x = layer(torch.cat((x, feats.pop()), dim=1), emb) if isinstance(layer, ResAttn) else layer(x)
        return self.final_conv(x)


class BaselineViewFusion(nn.Module):
    """The official training loss and reverse-step composition (weighting on)."""

    def __init__(self, denoiser: nn.Module, schedule: Schedule):
        super().__init__()
        for name, value in schedule.buffers().items():
            self.register_buffer(name, value)
        self.denoise_fn = denoiser

    def compose(self, y_t, y_cond, view_count, angle, noise_level):
        # angle, noise_level: (B, 1).
        bounds = [0, *torch.cumsum(view_count, 0).tolist()]
        cond = torch.cat([y_cond[i, :n] for i, n in enumerate(view_count)], dim=0)
        out = self.denoise_fn(
            torch.cat([cond, torch.repeat_interleave(y_t, view_count, dim=0)], dim=1),
            torch.repeat_interleave(angle, view_count, dim=0),
            torch.repeat_interleave(noise_level, view_count, dim=0),
        )
        noise_all, logits = out[:, :3], out[:, 3:]
        logits = pad_sequence([logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])], batch_first=True,
                              padding_value=float("-inf"))
        noise = pad_sequence([noise_all[a:b] for a, b in zip(bounds[:-1], bounds[1:])], batch_first=True)
        weights = F.softmax(logits, dim=1)
        return (noise * weights).sum(dim=1), weights

    def loss(self, y_0, y_cond, view_count, angle, *, noise=None, generator=None):
        _, gamma = sample_continuous_gamma(self.gammas, y_0.shape[0], generator=generator)
        if noise is None:
            noise = torch.randn(y_0.shape, generator=generator, device=y_0.device, dtype=y_0.dtype)
        y_noisy = add_noise(y_0, noise, gamma)
        eps_hat, _ = self.compose(y_noisy, y_cond, view_count, angle.view(-1, 1), gamma.view(-1, 1))
        return F.mse_loss(noise, eps_hat)

    @torch.no_grad()
    def reverse_step_mean(self, y_t, y_cond, view_count, angle, t):
        eps, weights = self.compose(y_t, y_cond, view_count, angle.view(-1, 1), self.gammas[t].view(-1, 1))
        at = lambda name: getattr(self, name)[t].view(-1, 1, 1, 1)  # noqa: E731
        y_0 = (at("sqrt_recip_gammas") * y_t - at("sqrt_recipm1_gammas") * eps).clamp(-1.0, 1.0)
        mean = at("posterior_mean_coef1") * y_0 + at("posterior_mean_coef2") * y_t
        return mean, at("posterior_log_variance_clipped"), weights
