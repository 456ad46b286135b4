"""The torch device a process runs on, from a `--device` flag: training ranks, sampling, probes.

It sits with the model, below the stages, because evaluate and train both pick devices and
evaluate never imports train.
"""

from __future__ import annotations

import re

import torch

from viewfusion.errors import ViewFusionError


def resolve_device(kind: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when present, else CPU; each rank takes the GPU of its local rank;
    `cuda:N` (one process, e.g. sampling) names a GPU."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", kind):
        raise ViewFusionError(f"--device {kind!r}: use auto, cpu, cuda or cuda:N")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ViewFusionError(f"--device {kind}: torch sees no CUDA device here; use --device cpu or auto")
    if kind.startswith("cuda:"):
        if int(kind[5:]) >= torch.cuda.device_count():
            raise ViewFusionError(f"--device {kind}: only {torch.cuda.device_count()} GPUs visible")
        return torch.device(kind)
    if kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ViewFusionError(f"local rank {local_rank} has no GPU: only "
                              f"{torch.cuda.device_count()} visible (CUDA_VISIBLE_DEVICES?)")
    return torch.device("cuda", local_rank)
