"""Resolving a configuration for the machine at hand: the device, and what the fast path runs with
(precision, channels_last, fused Adam, TF32, cuDNN autotuning) on it. Everything "auto" in a
RunConfig becomes concrete here, and the resolved values are what a record stores."""

from __future__ import annotations

import dataclasses
import os

import torch

from bench.config import RunConfig
from bench.errors import BenchError
from dip import heap
from dip.recipe import RestoreConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {name!r} asked for, but this torch build sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


# oneDNN's instruction-set levels (the values ONEDNN_MAX_CPU_ISA takes) and their rank; the AVX10 names
# are aliases of the AVX-512 ones. A cap below AVX512_CORE_BF16 leaves oneDNN without bf16 instructions:
# its bf16 convolutions then fall back to emulation (measured here: 28x slower than native at 64x64
# under ONEDNN_MAX_CPU_ISA=AVX2).
ONEDNN_ISA_RANK = {"SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4, "AVX512_CORE": 5,
                   "AVX512_CORE_VNNI": 6, "AVX512_CORE_BF16": 7, "AVX512_CORE_FP16": 8, "AVX10_1_512": 8,
                   "AVX512_CORE_AMX": 9, "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX_FP16": 10, "AVX10_1_512_AMX_FP16": 10}


def onednn_isa_cap() -> str | None:
    """The instruction-set cap set through ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA), if any."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap in ONEDNN_ISA_RANK else None  # ALL, DEFAULT or unset: no cap


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512-BF16 that oneDNN may use: bf16 convolutions then run at several times the fp32
    rate. The CPU flags alone are not enough: an instruction-set cap below AVX512_CORE_BF16 hides them."""
    cap = onednn_isa_cap()
    allows = (lambda level: cap is None or ONEDNN_ISA_RANK[cap] >= ONEDNN_ISA_RANK[level])
    amx = torch.cpu._is_amx_tile_supported() and allows("AVX512_CORE_AMX")
    avx512_bf16 = torch.cpu._is_avx512_bf16_supported() and allows("AVX512_CORE_BF16")
    return bool(amx or avx512_bf16)


def cpu_convolutions_run_avx2() -> bool:
    """Whether oneDNN's fp32 convolutions are limited to AVX2 here (no AVX-512 on the CPU, or a cap below
    AVX512_CORE). There Winograd's 3x3 convolutions pay (measured: 1.8x on the paper network's largest);
    under AVX-512, direct convolution runs at twice the AVX2 rate and Winograd's matmuls do not (MKL's
    on an AMD EPYC), and Winograd loses (docs/speed.md, "Winograd")."""
    cap = onednn_isa_cap()
    capped = cap is not None and ONEDNN_ISA_RANK[cap] < ONEDNN_ISA_RANK["AVX512_CORE"]
    return capped or not torch.cpu._is_avx512_supported()


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` names computes bf16 natively (compute capability 8.0 and up, or ROCm).
    torch's default check counts emulation too, which is True on a V100 or T4, where bf16 runs slower
    than fp16; and it asks the current device, which is not ``device`` for cuda:N with N > 0."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(config: RunConfig, device: torch.device) -> str:
    if config.precision != "auto":
        return config.precision
    if config.path == "reference":
        return "fp32"
    if device.type == "cuda":  # (planning a Slurm submission on a node without CUDA: a guess, see NODE_FIELDS)
        if cuda_has_native_bf16(device):
            return "bf16"
        # fp16 needs a GradScaler, which batched cells and CUDA graphs do not take (dip.batched, dip.recipe)
        return "fp16" if config.cells_per_gpu == 1 and not config.recipe.cuda_graphs else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cell_recipe(config: RunConfig, device: torch.device, out_channels: int) -> RestoreConfig:
    """The concrete recipe one (image, seed) cell trains with: no "auto" left."""
    fast = config.path == "fast"
    on_cuda = device.type == "cuda"
    precision = resolve_precision(config, device)

    def pick(value: bool | None, fast_default: bool) -> bool:
        return (fast and fast_default) if value is None else value

    cpu_fp32 = not on_cuda and precision == "fp32"
    # Winograd and the 1x1 matmuls pay where the convolutions run fp32 and AVX2 on a CPU (docs/speed.md,
    # "Winograd", "1x1 convolutions"); batched cells (vmap) take neither
    avx2_fp32_cell = cpu_fp32 and cpu_convolutions_run_avx2() and config.cells_per_gpu == 1

    return dataclasses.replace(
        config.recipe,
        precision=precision,
        # batched cells run contiguous (dip.batched): the fast path leaves channels_last off for them
        channels_last=pick(config.channels_last, precision != "fp32" and config.cells_per_gpu == 1),
        fused_adam=pick(config.fused_adam, True),
        tf32=pick(config.tf32, on_cuda),
        cudnn_benchmark=pick(config.cudnn_benchmark, on_cuda),
        winograd=pick(config.winograd, avx2_fp32_cell),
        # (not under torch.compile, which fails on it beside Winograd: dip.trainer.check_device)
        matmul_1x1=pick(config.matmul_1x1, avx2_fp32_cell and not config.recipe.compile),
        # Measured where the step runs fp32 (docs/speed.md, "Page faults"); where bf16 is fast its tensors are
        # half the size, below glibc's mmap ceiling, and keeping the heap was not measured to pay there
        keep_heap=pick(config.keep_heap, cpu_fp32 and heap.available()),
        net=dataclasses.replace(config.recipe.net, out_channels=out_channels),
    )
