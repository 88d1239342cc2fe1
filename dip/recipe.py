"""The training recipe (:class:`RestoreConfig`), the names it accepts, and the curve point a training
run reports. Torch-free: recipes are built, validated and compared (stored records hold
``RestoreConfig.to_dict()``) without PyTorch; :mod:`dip.restore` runs them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from dip.execution import PRECISIONS
from dip.nets.config import SkipNetConfig

__all__ = ["DIVERGENCE_POLICIES", "INPUT_NOISES", "PRECISIONS", "CurvePoint", "RestoreConfig"]

# What restore() does on a non-finite loss: restore the last good state and go on, or raise.
DIVERGENCE_POLICIES = ("backtrack", "fail")
# How the network's input noise is drawn (RestoreConfig.input_noise).
INPUT_NOISES = ("fixed", "cumulative")


@dataclass(frozen=True)
class RestoreConfig:
    """The training recipe; defaults are the paper's (Table 1, inpainting)."""

    iterations: int = 11000
    lr: float = 1e-3
    input_scale: float = 0.1  # z ~ input_scale * U[0, 1)
    input_noise_std: float = 0.03  # std of the per-iteration perturbation of z
    # "fixed": the net sees z + std * N(0, 1), fresh noise around the fixed z (the paper's code).
    # "cumulative": z itself walks, z <- z + std * N(0, 1) after every step (the seed reproduction).
    input_noise: str = "fixed"
    backtracking: bool = True
    backtrack_every: int = 50
    backtrack_drop_db: float = 5.0
    eval_every: int = 50  # curve points (loss, PSNRs) every this many iterations; one host sync each
    ema_decay: float = 0.99  # exponential moving average of the output, a second estimate; 0 = off
    # How the recipe is executed; none of these changes what is computed beyond rounding.
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    fused_adam: bool = False  # one fused kernel for Adam's update (CPU and CUDA)
    tf32: bool = False  # CUDA only: TF32 tensor cores for fp32 convolutions and matmuls
    cudnn_benchmark: bool = False  # CUDA only: autotune convolution algorithms for the fixed shapes
    cuda_graphs: bool = False  # CUDA only: the whole step replayed as CUDA graphs (dip.graphs)
    compile: bool = False  # torch.compile the network
    # fp32 3x3 stride-1 convolutions with outputs of at least 64x64 pixels by Winograd F(4x4, 3x3)
    # (dip.winograd): 4x fewer multiplications, forward and backward; rounding within 1e-5 of direct.
    winograd: bool = False
    # fp32 1x1 stride-1 convolutions as one matmul (dip.conv); rounding: the same sum in another order.
    matmul_1x1: bool = False
    # CPU, glibc: malloc keeps freed memory during each step (dip.heap) instead of unmapping the large
    # fp32 tensors, which the kernel then zeroes page by page at every step; nothing computed changes.
    keep_heap: bool = False
    timer_warmup: int = 5
    timer_window: int = 50
    # The network's hyper-parameters: z has net.in_channels channels, the image net.out_channels.
    # The caller builds the network itself (dip.nets.build_network) and hands it to restore().
    net: SkipNetConfig = field(default_factory=SkipNetConfig)

    def __post_init__(self) -> None:
        not_finite = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))]
        if not_finite:
            raise ValueError(f"{', '.join(not_finite)} must be finite")
        if self.iterations < 1:
            raise ValueError(f"iterations must be positive, got {self.iterations}")
        if not 0 < self.lr <= 1e30:  # beyond, Adam's update overflows float32 inside the optimiser
            raise ValueError(f"lr must be in (0, 1e30], got {self.lr}")
        if self.input_noise not in INPUT_NOISES:
            raise ValueError(f"unknown input_noise {self.input_noise!r}; choose from {', '.join(INPUT_NOISES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {sorted(PRECISIONS)}")
        for name in ("backtrack_every", "eval_every", "timer_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.input_noise_std < 0 or self.input_scale < 0 or self.timer_warmup < 0:
            raise ValueError("input_scale, input_noise_std and timer_warmup must be >= 0")
        if self.cuda_graphs and self.compile:
            raise ValueError("cuda_graphs and compile are alternatives; choose one")
        if self.cuda_graphs and self.precision == "fp16":
            raise ValueError("cuda_graphs does not support fp16's GradScaler; use bf16 or fp32")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CurvePoint:
    iteration: int  # 0-based index of the iteration whose forward pass produced these numbers
    loss: float
    psnr_masked: float  # PSNR of out * m against x * m: what backtracking watches
    psnr: float | None  # PSNR of the raw output against the reference image, if one was given
    psnr_ema: float | None = None  # the same for the moving average of the outputs
