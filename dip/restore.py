"""Deep Image Prior inpainting: fit a randomly initialised SkipNet to the observed pixels of one image.

The recipe (REFERENCE.md section 2): a fixed input z ~ 0.1 * U[0, 1) of shape (1, 32, H, W); at
every iteration the network sees z + 0.03 * N(0, 1) (fresh noise around the fixed z); the loss is
the MSE between out * m and x * m over all pixels; Adam with lr 1e-3. The authors' runs also
backtracked: every 50 iterations, if the PSNR of out * m against x * m fell by more than 5 dB since
the last accepted check, the parameters kept at that check are copied back.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dip.seeding import seed_everything
from dip.skipnet import SkipNet, SkipNetConfig, check_input_size
from dip.timing import IterationTimer, TimingSummary

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or output."""


@dataclass(frozen=True)
class RestoreConfig:
    """The training recipe; defaults are the paper's (Table 1, inpainting)."""

    iterations: int = 11000
    lr: float = 1e-3
    input_scale: float = 0.1  # z ~ input_scale * U[0, 1)
    input_noise_std: float = 0.03  # per-iteration perturbation of z, not cumulative
    backtracking: bool = True
    backtrack_every: int = 50
    backtrack_drop_db: float = 5.0
    eval_every: int = 50  # curve points (loss, PSNRs) every this many iterations; one host sync each
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    cudnn_benchmark: bool = True
    timer_warmup: int = 5
    timer_window: int = 50
    net: SkipNetConfig = field(default_factory=SkipNetConfig)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be positive, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {sorted(PRECISIONS)}")
        for name in ("backtrack_every", "eval_every", "timer_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.input_noise_std < 0 or self.input_scale < 0 or self.timer_warmup < 0:
            raise ValueError("input_scale, input_noise_std and timer_warmup must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CurvePoint:
    iteration: int  # 0-based index of the iteration whose forward pass produced these numbers
    loss: float
    psnr_masked: float  # PSNR of out * m against x * m: what backtracking watches
    psnr: float | None  # PSNR of the raw output against the reference image, if one was given


@dataclass
class RestoreResult:
    output: np.ndarray  # (H, W) or (H, W, C), float32 in [0, 1]
    curve: list[CurvePoint]
    final_loss: float
    backtracks: int
    backtrack_iterations: list[int]
    timing: TimingSummary
    precision: str


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W) or (H, W, C) float array -> (1, C, H, W) float32 tensor."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) -> (H, W) if C == 1 else (H, W, C), float32."""
    array = tensor.detach().float().cpu().numpy()[0].transpose(1, 2, 0)
    return array[..., 0] if array.shape[2] == 1 else array


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(mse) if mse > 0 else math.inf


def restore(
    observed: np.ndarray,
    mask: np.ndarray,
    config: RestoreConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    reference: np.ndarray | None = None,
    callback: Callable[[int, CurvePoint | None], None] | None = None,
) -> RestoreResult:
    """Inpaint ``observed`` (H, W[, C], floats in [0, 1]) where ``mask`` (H, W) is 0.

    Pixels where the mask is 0 are zeroed before training, so the method never sees them.
    ``reference`` (the ground truth) only feeds the PSNR curve. ``callback(i, point)`` is called after
    every iteration i, with a :class:`CurvePoint` at evaluation iterations and None otherwise.
    Raises :class:`DivergenceError` on a non-finite loss, checked at every evaluation/backtracking
    point (where the host synchronises anyway) and at the end.
    """
    device = torch.device(device)
    height, width = mask.shape
    channels = 1 if np.ndim(observed) == 2 else observed.shape[2]
    if np.shape(observed)[:2] != mask.shape:
        raise ValueError(f"observed {np.shape(observed)} and mask {mask.shape} differ in size")
    if channels != config.net.out_channels:
        raise ValueError(f"image has {channels} channels, the network outputs {config.net.out_channels}")
    check_input_size(height, width, config.net)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark

    # Draw everything random on the CPU generator first, so weights and z are the same on any device.
    seed_everything(seed)
    net = SkipNet(config.net)
    z = torch.rand(1, config.net.in_channels, height, width) * config.input_scale  # (1, 32, H, W)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    net = net.to(device, memory_format=memory_format).train()
    z = z.to(device).contiguous(memory_format=memory_format)
    noise_gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.empty_like(z)  # reused every step: no per-step allocation

    m = to_tensor(mask, device)  # (1, 1, H, W)
    x_masked = to_tensor(observed, device) * m  # (1, C, H, W), dropped pixels zeroed
    ref = None if reference is None else to_tensor(reference, device)

    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    params = list(net.parameters())
    kept = [p.detach().clone() for p in params]
    kept_psnr = 0.0  # the notebook's psnr_masked_last starts at 0
    backtrack_iterations: list[int] = []
    losses = torch.zeros(config.iterations, device=device)  # filled without host syncs
    curve: list[CurvePoint] = []

    timer = IterationTimer(device, warmup=min(config.timer_warmup, config.iterations - 1), window=config.timer_window)
    timer.start()
    net_input = z
    for i in range(config.iterations):
        net_input = torch.add(z, noise.normal_(generator=noise_gen), alpha=config.input_noise_std)
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, config.precision):
            out = net(net_input)
        out = out.float()  # (1, C, H, W); the loss is computed in fp32
        loss = F.mse_loss(out * m, x_masked)
        (scaler.scale(loss) if scaler else loss).backward()
        losses[i] = loss.detach()

        at_check = config.backtracking and i % config.backtrack_every == 0
        at_eval = i % config.eval_every == 0 or i == config.iterations - 1
        point = None
        if at_check or at_eval:
            loss_value = _finite_loss(losses, i)
            psnr_masked = psnr_from_mse(loss_value)
            if at_check:
                if psnr_masked - kept_psnr < -config.backtrack_drop_db:
                    with torch.no_grad():
                        for param, saved in zip(params, kept):
                            param.copy_(saved)
                    backtrack_iterations.append(i)
                else:
                    kept = [p.detach().clone() for p in params]
                    kept_psnr = psnr_masked
            if at_eval:
                psnr = None if ref is None else psnr_from_mse(F.mse_loss(out.detach(), ref).item())
                point = CurvePoint(i, loss_value, psnr_masked, psnr)
                curve.append(point)
        # As in the notebook, the step runs even after a backtrack, with the gradients just computed.
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        timer.tick()
        if callback is not None:
            callback(i, point)
    timing = timer.summary()

    # The notebook's final image: one more forward pass on the last perturbed input, still in train mode.
    with torch.no_grad(), autocast_context(device, config.precision):
        final = net(net_input).float()
    if not torch.isfinite(final).all():
        raise DivergenceError("the network's final output is not finite")
    return RestoreResult(
        output=to_numpy(final),
        curve=curve,
        final_loss=float(losses[-1]),
        backtracks=len(backtrack_iterations),
        backtrack_iterations=backtrack_iterations,
        timing=timing,
        precision=config.precision,
    )


def _finite_loss(losses: torch.Tensor, i: int) -> float:
    """The loss of iteration i; raises if any loss up to i was not finite (one host sync)."""
    seen = losses[: i + 1]
    if not bool(torch.isfinite(seen).all()):
        first = int((~torch.isfinite(seen)).nonzero()[0])
        raise DivergenceError(f"training diverged: non-finite loss at iteration {first}")
    return float(seen[i])
