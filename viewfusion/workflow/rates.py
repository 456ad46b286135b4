"""The rate model: U-Net evaluations per second of a GPU class, for sampling and training.

    default_rates("v100")["sample"]   # 365 forward evaluations/s of the paper U-Net (fp32)

A GPU class's default = dense peak TFLOP/s of the dtype x UTILISATION / FLOPs per U-Net
evaluation of the paper model (FLOPS_FORWARD, FLOPS_TRAIN). UTILISATION["fp32"] is calibrated on
the paper's own run (710 k steps of 112 targets in ~6.5 days on 4 V100 in fp32: 124 forward +
backward evaluations/s per V100, 49% of its fp32 peak); UTILISATION["tensor"] (bf16/fp16/TF32 on
tensor cores) is an assumption until benchmarks/gpu_check.sh measures it on that GPU (its JSON's
"plan_rates" feed `viewfusion plan --rates`). Sampling runs in fp32, on Ampere and later through
cuDNN's TF32 convolutions. The rates are the paper U-Net's (64 px, 33.9 M parameters): for
another model size pass measured rates. `viewfusion plan` and the workflow's chunk sizing
(viewfusion.workflow.chunking) both ask this module. Torch-free.
"""

from __future__ import annotations

from typing import Any

from viewfusion.errors import ViewFusionError

# FLOPs of one U-Net evaluation of the paper model (64 px, batch row of one view):
# forward (benchmarks/model.py, docs/NOTES.md: 21.0 GFLOP) and forward + backward
# (benchmarks/train.py: 61.9 GFLOP).
FLOPS_FORWARD = 21.0e9
FLOPS_TRAIN = 61.9e9
# Dense peak TFLOP/s (no sparsity) per dtype: data sheets. fp32 on CUDA cores; tf32, bf16 and
# fp16 on tensor cores (the V100's tensor cores take fp16 only).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "v100": {"fp32": 15.7, "fp16": 125.0},
    "a100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "l40s": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0},
    "h100": {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0},
    "h200": {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0},
}
# Achieved fraction of peak: fp32 from the paper's V100 run (see the module doc), tensor-core
# dtypes assumed (small 64 px convolutions keep tensor cores far from their peak).
PAPER_V100_TRAIN_EVALS_PER_S = 710_000 * 112 * 3.5 / (6.5 * 86_400 * 4)
UTILISATION = {"fp32": PAPER_V100_TRAIN_EVALS_PER_S * FLOPS_TRAIN / (PEAK_TFLOPS["v100"]["fp32"] * 1e12),
               "tensor": 0.25}
# The fixed cost of one `viewfusion sample` job whatever its targets: interpreter, imports, reading
# and hashing the paper checkpoint, opening the data, writing the chunk. benchmarks/sample_job.py
# measured 8.75 s on the 2-core CPU machine (1 target, 1 DDIM step); a GPU node adds CUDA start-up.
JOB_STARTUP_SECONDS = 9.0


def default_rates(gpu: str) -> dict[str, Any]:
    """U-Net evaluations per second of one GPU of class `gpu`: sampling (forward, fp32/TF32)
    and training (forward + backward) per precision, from PEAK_TFLOPS and UTILISATION."""
    if gpu not in PEAK_TFLOPS:
        raise ViewFusionError(f"GPU class {gpu!r}: known classes are {', '.join(PEAK_TFLOPS)}; "
                              "or give measured rates (--rates, --sample-evals-per-second)")
    peaks = PEAK_TFLOPS[gpu]

    def rate(dtype: str, flops: float) -> float:
        kind = "fp32" if dtype == "fp32" else "tensor"
        return peaks[dtype] * 1e12 * UTILISATION[kind] / flops

    sample_dtype = "tf32" if "tf32" in peaks else "fp32"
    return {"gpu": gpu, "source": "default (module viewfusion.workflow.rates: peak x utilisation / FLOPs)",
            "sample": rate(sample_dtype, FLOPS_FORWARD),
            "train": {p: rate(p if p in peaks else "fp32", FLOPS_TRAIN) for p in ("fp32", "fp16", "bf16")}}


def bf16_tensor_cores(gpu: str) -> bool:
    return "bf16" in PEAK_TFLOPS.get(gpu, {})
