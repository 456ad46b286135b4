"""U-Net layers against their plain forms: the fused GroupNorm+SiLU, channels_last, attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_utils import TINY_UNET

from viewfusion.model.unet import Block, SelfAttention, UNet, _GroupNormSiLU

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_groupnorm_silu_gradients_equal_autograd(layout):
    torch.manual_seed(0)
    block = Block(16, 8, groups=4).double()
    with torch.no_grad():
        block.block[0].weight.uniform_(0.5, 1.5)
        block.block[0].bias.uniform_(-0.5, 0.5)
    x = (torch.randn(3, 16, 6, 6, dtype=torch.float64) * 2 + 1).contiguous(memory_format=layout)
    x.requires_grad_()
    out = block(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    norm, _, _, conv = block.block
    ref = conv(F.silu(norm(x)))
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_fused_groupnorm_silu_in_bf16_stays_close_to_fp32():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16)
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 16, 8, 8)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        leaf = x.to(dtype).detach().requires_grad_()
        out = _GroupNormSiLU.apply(leaf, norm.weight, norm.bias, 4, 1e-5)
        (out.float() * grad).sum().backward()
        results.append((out.float(), leaf.grad.float()))
    assert results[1][0].dtype == torch.float32  # compared in fp32; bf16 in, bf16 out
    torch.testing.assert_close(results[1][0], results[0][0], atol=0.05, rtol=0.02)
    torch.testing.assert_close(results[1][1], results[0][1], atol=0.05, rtol=0.05)


def test_channels_last_layout_changes_no_value_or_gradient():
    torch.manual_seed(0)
    fast = UNet(**TINY_UNET)
    plain = UNet(**TINY_UNET, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    x, angle, gamma = torch.randn(3, 6, 16, 16), torch.rand(3), torch.rand(3)
    outs, grads = [], []
    for net in (fast, plain):
        out = net(x, angle, gamma)
        out.square().mean().backward()
        outs.append(out)
        grads.append({name: p.grad for name, p in net.named_parameters()})
    assert fast.downs[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_attention_equals_the_official_einsum():
    torch.manual_seed(0)
    attn = SelfAttention(32, norm_groups=8)
    x = torch.randn(2, 32, 6, 5)
    b, c, h, w = x.shape
    q, k, v = attn.qkv(attn.norm(x)).view(b, 1, 3 * c, h, w).chunk(3, dim=2)
    scores = torch.einsum("bnchw, bncyx -> bnhwyx", q, k) / math.sqrt(c)
    probs = torch.softmax(scores.reshape(b, 1, h, w, -1), -1).view(b, 1, h, w, h, w)
    ref = attn.out(torch.einsum("bnhwyx, bncyx -> bnchw", probs, v).reshape(b, c, h, w)) + x
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)
