"""Published peak throughput of common GPUs, to put a run's achieved GFLOP/s in proportion.

Dense (no structured sparsity) tensor-core peaks from the vendors' data sheets, in TFLOP/s:
``tensor`` for bf16/fp16 inputs, ``tf32`` for fp32 convolutions with TF32 allowed, ``fp32`` for
plain fp32. A GPU not in the table gets no fraction rather than a guessed one.

Names match exactly, after :func:`normalised_name`: a substring would give the L40 the L4's peaks, and
the H100 NVL or a MIG slice ("NVIDIA H100 80GB HBM3 MIG 1g.10gb": a fraction of the SMs) the whole SXM
board's. The NVL boards are left out: their clocks and power limits are not the SXM boards'.
"""

from __future__ import annotations

H100_SXM = {"tensor": 989.4, "tf32": 494.7, "fp32": 66.9}
A100 = {"tensor": 312.0, "tf32": 156.0, "fp32": 19.5}  # the same on every A100 board, SXM4 or PCIe, 40 or 80 GB
V100_SXM2 = {"tensor": 125.0, "fp32": 15.7}  # the PCIe board runs at lower clocks: not listed

# normalised_name(torch.cuda.get_device_name()) -> peaks
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h100 80gb hbm3": H100_SXM,  # the SXM5 board
    "h100 pcie": {"tensor": 756.0, "tf32": 378.0, "fp32": 51.2},
    "h200": H100_SXM,  # the SXM board: the H100's chip with more memory
    "a100-sxm4-40gb": A100,
    "a100-sxm4-80gb": A100,
    "a100-sxm-80gb": A100,
    "a100-pcie-40gb": A100,
    "a100 80gb pcie": A100,
    "l40s": {"tensor": 362.1, "tf32": 183.0, "fp32": 91.6},
    "l4": {"tensor": 121.0, "tf32": 60.0, "fp32": 30.3},
    "a10": {"tensor": 125.0, "tf32": 62.5, "fp32": 31.2},
    "rtx 4090": {"tensor": 165.2, "tf32": 82.6, "fp32": 82.6},
    "v100-sxm2-16gb": V100_SXM2,
    "v100-sxm2-32gb": V100_SXM2,
    "t4": {"tensor": 65.0, "fp32": 8.1},
}

# Words before the model that some drivers write and others leave out ("A100-SXM4-40GB" from older ones).
BRAND_WORDS = ("nvidia", "tesla", "geforce")


def normalised_name(device_name: str) -> str:
    """``device_name`` in lower case, runs of spaces collapsed, without its leading brand words."""
    words = device_name.lower().split()
    while words and words[0] in BRAND_WORDS:
        words.pop(0)
    return " ".join(words)


def peak_tflops(device_name: str, precision: str, tf32: bool) -> float | None:
    """The device's peak for the arithmetic a run used, or None if the device is not in the table."""
    kind = "tensor" if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    peaks = GPU_PEAK_TFLOPS.get(normalised_name(device_name))
    return peaks.get(kind) if peaks else None
