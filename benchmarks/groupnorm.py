"""GroupNorm -> SiLU of the U-Net blocks, forward + backward, against the official way; ONE JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/groupnorm.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/groupnorm.py --rows 12 --repeats 20

For the activation shapes of the paper U-Net's biggest levels (rows x channels x 64 x 64 and
x 32 x 32, channels-last as our net runs), in milliseconds of process CPU time per call (min over
repeats):
* `ours_ms`: the fused `_GroupNormSiLU` autograd function (saves x and the group statistics,
  recomputes the normalised tensor in backward, vectorised channels-last backward);
* `official_ms`: `nn.GroupNorm` then `x * torch.sigmoid(x)` under autograd, as the official code;
* `copy_ms`: one `clone()` of the activation, the memory-bound floor of a single pass.
`passes` = ours / copy says how many full-activation memory passes ours costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from viewfusion.model.unet import _GroupNormSiLU  # noqa: E402


def cpu_ms(fn, *, repeats: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return round(best * 1000, 3)


def measure(shape: tuple[int, int, int, int], *, groups: int, repeats: int) -> dict:
    torch.manual_seed(0)
    channels = shape[1]
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    norm = nn.GroupNorm(groups, channels)

    def ours():
        x.grad = None  # a fresh input gradient each call, as for an activation in training
        _GroupNormSiLU.apply(x, norm.weight, norm.bias, groups, norm.eps).backward(grad)

    def official():
        x.grad = None
        h = norm(x)
        (h * torch.sigmoid(h)).backward(grad)

    ours_ms, official_ms = cpu_ms(ours, repeats=repeats), cpu_ms(official, repeats=repeats)
    copy_ms = cpu_ms(lambda: x.detach().clone(), repeats=repeats)
    return {"shape": list(shape), "ours_ms": ours_ms, "official_ms": official_ms, "copy_ms": copy_ms,
            "speedup": round(official_ms / ours_ms, 3), "passes": round(ours_ms / copy_ms, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=12, help="U-Net rows (the benchmark of model.py: 12)")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    shapes = [(args.rows, 64, 64, 64), (args.rows, 128, 64, 64), (args.rows, 128, 32, 32), (args.rows, 256, 32, 32)]
    rows = [measure(shape, groups=32, repeats=args.repeats) for shape in shapes]
    print(json.dumps({"groupnorm_silu_fwd_bwd": rows, "threads": torch.get_num_threads(), "clock": "cpu",
                      "statistic": f"min over {args.repeats} repeats", "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
