"""Published peak throughput of common GPUs, to put a run's achieved GFLOP/s in proportion.

Dense (no structured sparsity) tensor-core peaks from the vendors' data sheets, in TFLOP/s:
``tensor`` for bf16/fp16 inputs, ``tf32`` for fp32 convolutions with TF32 allowed, ``fp32`` for
plain fp32. A GPU not in the table gets no fraction rather than a guessed one.
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name, peaks); the first match wins, so specific names go first.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"tensor": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"tensor": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H200", {"tensor": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"tensor": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"tensor": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"tensor": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"tensor": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("RTX 4090", {"tensor": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("V100", {"tensor": 125.0, "fp32": 15.7}),
    ("T4", {"tensor": 65.0, "fp32": 8.1}),
]


def peak_tflops(device_name: str, precision: str, tf32: bool) -> float | None:
    """The device's peak for the arithmetic a run used, or None if the device is not in the table."""
    kind = "tensor" if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    for pattern, peaks in GPU_PEAK_TFLOPS:
        if pattern in device_name:
            return peaks.get(kind)
    return None
