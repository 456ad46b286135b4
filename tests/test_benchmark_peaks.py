"""benchmarks/peaks.py: MFU divides by the right GPU's peak, and by none for a GPU it does not know."""

from __future__ import annotations

import pytest
from peaks import peak_tflops  # noqa: E402


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0),  # not the SXM figure, though it contains "H100"
    ("NVIDIA H100 PCIe", "fp32", 51.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
    ("NVIDIA H100 NVL", "bf16", None),  # lower clocks: the user passes --peak-tflops
    ("Tesla V100-SXM2-32GB", "bf16", None),  # no bf16 tensor cores
    ("NVIDIA H100 80GB HBM3", "fp16", None),
])
def test_peak_tflops_by_device_name(name, dtype, peak):
    assert peak_tflops(name, dtype) == peak
