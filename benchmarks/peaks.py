"""Dense peak FLOP/s of known GPUs, for MFU (model FLOPs utilisation) in the benchmarks.

Vendor data-sheet figures without structured sparsity: bf16 on tensor cores, fp32 on the plain
CUDA cores. A GPU is recognised by a substring of `torch.cuda.get_device_name()`; one that is not
(or a variant whose clocks differ, such as the NVL boards) gets None, and the benchmarks then
report no MFU unless `--peak-tflops` gives the peak.
"""

from __future__ import annotations

# (name substring, peak TFLOP/s per dtype); the first match wins, so specific names come first.
_PEAKS = (
    ("NVL", None),  # H100 NVL / H200 NVL: lower clocks than SXM; pass --peak-tflops
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
)


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Peak dense TFLOP/s of the named GPU in `dtype` ("bf16" or "fp32"), None when unknown."""
    for key, peaks in _PEAKS:
        if key in device_name:
            return None if peaks is None else peaks.get(dtype)
    return None
