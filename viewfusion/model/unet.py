"""SR3-style U-Net denoiser of ViewFusion, weight-compatible with the official release.

Module names, nesting and Sequential indices mirror the official `model/unet.py` so that the
published state dict (`denoise_fn.*`) loads with `strict=True`. What differs is how it runs:

* attention goes through `F.scaled_dot_product_attention` (no materialised HW x HW einsum), on
  (B, HW, C) token views; 1x1 convolutions run as GEMMs on those views;
* the net runs channels-last by default (oneDNN convolutions without layout reorders);
* GroupNorm -> Swish is one autograd function that keeps only its input and the group statistics
  for backward (the official `x * sigmoid(x)` keeps the normalised tensor, the sigmoid and the
  product: most of the net's activation memory), with a vectorised channels-last backward; under
  CPU bf16 autocast it normalises bf16 in place of a round trip through fp32.

Conditioning (as the official code): sinusoidal encodings of the continuous noise level gamma and
of the raw target angle in radians (each `inner_channel // 2` wide) are concatenated and fed to
`noise_level_mlp`; every res block adds a linear projection of the result (no scale term).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "PositionalEncoding"]


class PositionalEncoding(nn.Module):
    """WaveGrad encoding of raw values: [sin(v * f_k), cos(v * f_k)], f_k = 1e4^(-k / (dim / 2))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, value: Tensor) -> Tensor:
        count = self.dim // 2
        step = torch.arange(count, dtype=value.dtype, device=value.device) / count
        encoding = value.unsqueeze(1) * torch.exp(-math.log(1e4) * step.unsqueeze(0))
        return torch.cat([torch.sin(encoding), torch.cos(encoding)], dim=-1)


def _group_norm(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float):
    """(normalised, mean, rstd) by the native kernel.

    On CPU a bf16 input with fp32 affine parameters (bf16 autocast) is normalised as is: the
    kernel keeps statistics in fp32 and returns bf16, ready for the next bf16 convolution. Elsewhere
    the input is cast to the parameters' dtype, as autocast does for group_norm.
    """
    if x.dtype != weight.dtype and x.device.type != "cpu":
        x = x.to(weight.dtype)
    n, c = x.shape[:2]
    return torch.ops.aten.native_group_norm(x, weight, bias, n, c, x.numel() // (n * c), groups, eps)


def _group_norm_backward_nhwc(
    grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """GroupNorm backward for channels-last x in a few vectorised passes.

    The native CPU kernel is slow on channels-last tensors (2x the NCHW time in fp32, 30x in
    bf16). With per-(sample, channel) sums s1 = sum(dy), s2 = sum(dy x) and D = elements per
    group: dx = rstd w dy + c2 x + c3, c2 = (db mean - ds) rstd^3 / D, c3 = -c2 mean - db rstd / D,
    where ds, db are the group sums of w s2, w s1 (as in the native kernel).
    """
    n, c = x.shape[:2]
    per_group = c // groups
    mean, rstd = mean.view(n, groups), rstd.view(n, groups)
    # Sums in the tensors' dtype: the CPU kernel accumulates bf16 in fp32 and only rounds the
    # (N, C) result, while asking for an fp32 result would first copy the whole tensor to fp32.
    acc = torch.promote_types(mean.dtype, torch.float32)
    s1 = grad.sum(dim=(2, 3)).to(acc)
    s2 = (grad * x).sum(dim=(2, 3)).to(acc)
    ds = (s2 * weight).view(n, groups, per_group).sum(-1)
    db = (s1 * weight).view(n, groups, per_group).sum(-1)
    size = x.numel() // (n * groups)
    c2 = (db * mean - ds) * rstd.pow(3) / size
    c3 = -c2 * mean - db * rstd / size
    per_channel = lambda t: t.repeat_interleave(per_group, dim=1)  # noqa: E731
    coef = lambda t: t[:, :, None, None].to(grad.dtype)  # noqa: E731
    grad_x = torch.addcmul(coef(per_channel(c3)), grad, coef(per_channel(rstd) * weight))
    grad_x.addcmul_(x, coef(per_channel(c2)))
    grad_w = ((s2 - s1 * per_channel(mean)) * per_channel(rstd)).sum(0)
    return grad_x, grad_w, s1.sum(0)


def _renormalise(x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor, groups: int) -> Tensor:
    """group_norm(x) again from the saved statistics: one multiply-add pass, x * scale + shift."""
    n, c = x.shape[:2]
    scale = (rstd.view(n, groups, 1) * weight.view(1, groups, c // groups)).view(n, c)
    shift = bias - mean.view(n, groups, 1).expand(n, groups, c // groups).reshape(n, c) * scale
    return torch.addcmul(shift[:, :, None, None].to(x.dtype), x, scale[:, :, None, None].to(x.dtype))


def _group_norm_silu(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
    return F.silu(_group_norm(x, weight, bias, groups, eps)[0])


class _GroupNormSiLU(torch.autograd.Function):
    """silu(group_norm(x)) that keeps only x and the per-group statistics for backward.

    The normalised tensor is recomputed in backward from the saved statistics (one multiply-add
    pass, a fraction of a 3x3 convolution's cost). Keeping it alive, as autograd would, with the
    sigmoid and the product (as the official `x * sigmoid(x)` does) triples a Block's memory.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
        normed, mean, rstd = _group_norm(x, weight, bias, groups, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.norm_dtype = groups, normed.dtype
        return F.silu(normed)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        normed = _renormalise(x.to(ctx.norm_dtype), weight, bias, mean, rstd, ctx.groups)
        grad = torch.ops.aten.silu_backward(grad_out.to(normed.dtype), normed)
        del normed
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            grad_x, grad_w, grad_b = _group_norm_backward_nhwc(grad, x, mean, rstd, weight, ctx.groups)
        else:
            xw = x.to(grad.dtype)
            n, c = x.shape[:2]
            grad_x, grad_w, grad_b = torch.ops.aten.native_group_norm_backward(
                grad, xw, mean, rstd, weight, n, c, x.numel() // (n * c), ctx.groups, [True, True, True]
            )
        needs = ctx.needs_input_grad
        grad_x = grad_x.to(x.dtype) if needs[0] else None
        grad_w = grad_w.to(weight.dtype) if needs[1] else None
        grad_b = grad_b.to(bias.dtype) if needs[2] else None
        return grad_x, grad_w, grad_b, None, None


class Block(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> 3x3 conv; `block` indices 0..3 as in the checkpoint."""

    def __init__(self, dim: int, dim_out: int, *, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout != 0 else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        norm, _, drop, conv = self.block
        if torch.is_grad_enabled():
            h = _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)
        else:
            h = _group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps)
        return conv(drop(h))


class FeatureWiseAffine(nn.Module):
    """Adds a linear projection of the conditioning vector to every channel."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(in_channels, out_channels))

    def forward(self, x: Tensor, embed: Tensor) -> Tensor:
        # In place: x is a fresh convolution output that autograd does not keep.
        return x.add_(self.noise_func(embed)[:, :, None, None])


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, *, emb_dim: int, dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.noise_func = FeatureWiseAffine(emb_dim, dim_out)
        self.block1 = Block(dim, dim_out, groups=norm_groups)
        self.block2 = Block(dim_out, dim_out, groups=norm_groups, dropout=dropout)
        self.res_conv = Conv1x1(dim, dim_out) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, embed: Tensor) -> Tensor:
        h = self.noise_func(self.block1(x), embed)
        return self.block2(h).add_(self.res_conv(x))  # in place on a fresh conv output


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution (same parameters as nn.Conv2d) computed as a GEMM over channels.

    On a channels-last tensor the (B, H, W, C) view is free, so this is one matmul with no
    im2col or layout reorders (CPU picks its slow THNN path for 1x1 convs on one thread).
    """

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            return super().forward(x)
        return _linear_nhwc(x, self.weight, self.bias)


def _linear_nhwc(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    tokens = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)  # (B, H, W, C_out)
    return tokens.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions, scaled by 1/sqrt(channels) (official)."""

    def __init__(self, in_channel: int, *, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, in_channel)
        self.qkv = Conv1x1(in_channel, in_channel * 3, bias=False)
        self.out = Conv1x1(in_channel, in_channel)

    def forward(self, x: Tensor) -> Tensor:
        batch, channel, height, width = x.shape
        # Work on (B, HW, C) tokens: a free view of a channels-last tensor; q, k, v are the
        # official channel thirds [0:C], [C:2C], [2C:3C] of the qkv projection.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(batch, 1, height * width, channel)
        q, k, v = F.linear(tokens, self.qkv.weight.flatten(1)).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(channel))
        out = F.linear(out, self.out.weight.flatten(1), self.out.bias)
        return out.reshape(batch, height, width, channel).permute(0, 3, 1, 2) + x


class ResnetBlocWithAttn(nn.Module):
    def __init__(
        self, dim: int, dim_out: int, *, emb_dim: int, norm_groups: int, dropout: float, with_attn: bool
    ) -> None:
        super().__init__()
        self.with_attn = with_attn
        self.res_block = ResnetBlock(dim, dim_out, emb_dim=emb_dim, dropout=dropout, norm_groups=norm_groups)
        if with_attn:
            self.attn = SelfAttention(dim_out, norm_groups=norm_groups)

    def forward(self, x: Tensor, embed: Tensor) -> Tensor:
        x = self.res_block(x, embed)
        return self.attn(x) if self.with_attn else x


class Downsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _as_batch_vector(value: Tensor, name: str, batch: int) -> Tensor:
    """Accept (B,) or (B, 1) (the official code only took (B, 1)); return (B,)."""
    if value.dim() == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.shape != (batch,):
        raise ValueError(f"{name} must have shape (B,) or (B, 1) with B={batch}, got {tuple(value.shape)}")
    return value


class UNet(nn.Module):
    """The SR3 U-Net of the paper; defaults are the paper config (33.9 M parameters).

    `forward(x, angle, noise_level)`: x (B, in_channel, H, W) = [conditioning view, (reference
    view,) noisy target]; angle and noise_level (B,) or (B, 1). Returns (B, out_channel, H, W):
    3 noise channels, then 3 view-weight logits when out_channel is 6. `channels_last` (not an
    official keyword) only picks the memory layout.
    """

    def __init__(
        self,
        *,
        in_channel: int = 6,
        out_channel: int = 6,
        inner_channel: int = 64,
        norm_groups: int = 32,
        channel_mults: Sequence[int] = (1, 2, 3, 5),
        attn_res: Sequence[int] = (16,),
        res_blocks: int = 3,
        dropout: float = 0.0,
        image_size: int = 64,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        _check_config(inner_channel, norm_groups, channel_mults, image_size)
        self.config = dict(
            in_channel=in_channel, out_channel=out_channel, inner_channel=inner_channel,
            norm_groups=norm_groups, channel_mults=list(channel_mults), attn_res=list(attn_res),
            res_blocks=res_blocks, dropout=dropout, image_size=image_size,
        )
        self.pos_encoding = PositionalEncoding(inner_channel // 2)
        self.noise_level_mlp = nn.Sequential(
            nn.Linear(inner_channel, inner_channel * 4), nn.SiLU(), nn.Linear(inner_channel * 4, inner_channel)
        )
        block = dict(emb_dim=inner_channel, norm_groups=norm_groups, dropout=dropout)
        downs, feat_channels, now_res = self._build_downs(
            in_channel, channel_mults, attn_res, res_blocks, image_size, block
        )
        self.downs = nn.ModuleList(downs)
        pre = feat_channels[-1]
        self.mid = nn.ModuleList(
            [ResnetBlocWithAttn(pre, pre, with_attn=attn, **block) for attn in (True, False)]
        )
        self.ups = nn.ModuleList(self._build_ups(feat_channels, channel_mults, attn_res, res_blocks, now_res, block))
        self.final_conv = Block(inner_channel * channel_mults[0], out_channel, groups=norm_groups)
        # Channels-last: oneDNN convolutions run without layout reorders, 1x1 convolutions and
        # attention projections become plain GEMMs on free (B, H, W, C) views. Values and
        # state-dict names are unchanged; only strides differ.
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _build_downs(self, in_channel, channel_mults, attn_res, res_blocks, image_size, block):
        inner = self.config["inner_channel"]
        layers: list[nn.Module] = [nn.Conv2d(in_channel, inner, kernel_size=3, padding=1)]
        feat_channels, pre, now_res = [inner], inner, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                layers.append(ResnetBlocWithAttn(pre, inner * mult, with_attn=now_res in attn_res, **block))
                pre = inner * mult
                feat_channels.append(pre)
            if level != len(channel_mults) - 1:
                layers.append(Downsample(pre))
                feat_channels.append(pre)
                now_res //= 2
        return layers, feat_channels, now_res

    def _build_ups(self, feat_channels, channel_mults, attn_res, res_blocks, now_res, block):
        inner, skips = self.config["inner_channel"], list(feat_channels)
        layers: list[nn.Module] = []
        pre = skips[-1]
        for level in reversed(range(len(channel_mults))):
            out = inner * channel_mults[level]
            for _ in range(res_blocks + 1):
                layers.append(ResnetBlocWithAttn(pre + skips.pop(), out, with_attn=now_res in attn_res, **block))
                pre = out
            if level != 0:
                layers.append(Upsample(pre))
                now_res *= 2
        return layers

    def forward(self, x: Tensor, angle: Tensor, noise_level: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config["in_channel"]:
            raise ValueError(f"x must be (B, {self.config['in_channel']}, H, W), got {tuple(x.shape)}")
        batch = x.shape[0]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        angle = _as_batch_vector(angle, "angle", batch).to(x.dtype)
        noise_level = _as_batch_vector(noise_level, "noise_level", batch).to(x.dtype)
        embed = self.noise_level_mlp(torch.cat([self.pos_encoding(noise_level), self.pos_encoding(angle)], dim=-1))
        feats = []
        for layer in self.downs:
            x = layer(x, embed) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, embed)
        for layer in self.ups:
            x = layer(torch.cat((x, feats.pop()), dim=1), embed) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
        return self.final_conv(x)


def _check_config(inner_channel: int, norm_groups: int, channel_mults: Sequence[int], image_size: int) -> None:
    if inner_channel % 2 or inner_channel % norm_groups:
        raise ValueError(f"inner_channel={inner_channel} must be even and divisible by norm_groups={norm_groups}")
    if not channel_mults:
        raise ValueError("channel_mults must name at least one level")
    if image_size % 2 ** (len(channel_mults) - 1):
        raise ValueError(f"image_size={image_size} must be divisible by 2**(len(channel_mults)-1)")
