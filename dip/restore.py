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
from dip.skipnet import SkipNetConfig, build_network, check_input_size
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
    cuda_graphs: bool = False  # CUDA only: replay forward + backward as CUDA graphs
    compile: bool = False  # torch.compile the network
    timer_warmup: int = 5
    timer_window: int = 50
    net: SkipNetConfig = field(default_factory=SkipNetConfig)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be positive, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.input_noise not in ("fixed", "cumulative"):
            raise ValueError(f"unknown input_noise {self.input_noise!r}; choose from fixed, cumulative")
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


@dataclass
class RestoreResult:
    output: np.ndarray  # (H, W) or (H, W, C), float32 in [0, 1]
    output_ema: np.ndarray | None  # moving average of the training outputs (None if ema_decay is 0)
    curve: list[CurvePoint]
    final_loss: float
    backtracks: int
    backtrack_iterations: list[int]
    timing: TimingSummary
    precision: str


def autocast_context(device: torch.device, precision: str, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


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


def check_device(config: RestoreConfig, device: torch.device) -> None:
    """Raise ValueError if ``config`` asks for CUDA-only execution switches on another device."""
    cuda_only = [name for name in ("tf32", "cudnn_benchmark", "cuda_graphs") if getattr(config, name)]
    if device.type != "cuda" and cuda_only:
        raise ValueError(f"{', '.join(cuda_only)} need{'s' if len(cuda_only) == 1 else ''} a CUDA device")


class Trainer:
    """The state of one restoration and its training step, split where backtracking acts.

    ``forward_backward()`` computes the loss of one perturbed input and its gradients;
    ``optimizer_step()`` applies them. The restoration loop (and the speed benchmark) call the two in
    turn; backtracking runs between them, as in the authors' closure.
    """

    def __init__(self, observed: np.ndarray, mask: np.ndarray, config: RestoreConfig, *, seed: int, device: torch.device) -> None:
        self.config = config
        self.device = device
        height, width = mask.shape
        channels = 1 if np.ndim(observed) == 2 else observed.shape[2]
        if np.shape(observed)[:2] != mask.shape:
            raise ValueError(f"observed {np.shape(observed)} and mask {mask.shape} differ in size")
        if channels != config.net.out_channels:
            raise ValueError(f"image has {channels} channels, the network outputs {config.net.out_channels}")
        check_input_size(height, width, config.net)
        check_device(config, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
            torch.backends.cudnn.allow_tf32 = config.tf32
            torch.backends.cuda.matmul.allow_tf32 = config.tf32

        # Draw everything random on the CPU generator first: same weights and z on any device.
        seed_everything(seed)
        net = build_network(config.net)
        z = torch.rand(1, config.net.in_channels, height, width) * config.input_scale  # (1, 32, H, W)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.net = net.to(device, memory_format=memory_format).train()
        self.z = z.to(device).contiguous(memory_format=memory_format)
        self.noise_gen = torch.Generator(device=device).manual_seed(seed)
        # Reused every step. Filled through a buffer laid out in memory order: normal_ on a
        # channels_last view takes a slow strided path on a CPU (several times slower).
        # The entries are i.i.d., so which element gets which draw does not matter.
        if config.channels_last:
            self.noise_buffer = torch.empty(1, height, width, config.net.in_channels, device=device)
            self.noise = self.noise_buffer.permute(0, 3, 1, 2)  # (1, 32, H, W) view, channels_last strides
        else:
            self.noise_buffer = self.noise = torch.empty_like(self.z)
        # Likewise: z + std * noise is written into it ("fixed"), or it is the walking z ("cumulative").
        self.net_input = self.z.clone() if config.input_noise == "cumulative" else torch.empty_like(self.z)
        self.steps = 0
        self.mask = to_tensor(mask, device)  # (1, 1, H, W)
        self.x_masked = to_tensor(observed, device) * self.mask  # (1, C, H, W), dropped pixels zeroed
        self.params = list(self.net.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, fused=config.fused_adam or None)
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
        self.model = self._accelerated(self.net)

    def _accelerated(self, net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.config.compile:
            return torch.compile(net)
        if self.config.cuda_graphs:
            # make_graphed_callables warms up on a side stream, then captures forward and backward;
            # autocast's weight-cast cache must be off inside captured regions. Not run on a GPU yet.
            with autocast_context(self.device, self.config.precision, cache_enabled=False):
                return torch.cuda.make_graphed_callables(net, (self.net_input,))
        return net

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One perturbed input through the network and back. Returns (output (1, C, H, W), loss)."""
        if self.config.input_noise == "fixed":
            self.noise_buffer.normal_(generator=self.noise_gen)
            torch.add(self.z, self.noise, alpha=self.config.input_noise_std, out=self.net_input)
        elif self.steps > 0:  # cumulative: the first step sees z itself, as in the seed reproduction
            self.noise_buffer.normal_(generator=self.noise_gen)
            self.net_input.add_(self.noise, alpha=self.config.input_noise_std)
        self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.config.precision, cache_enabled=not self.config.cuda_graphs):
            out = self.model(self.net_input)
        out = out.float()  # the loss is computed in fp32
        loss = F.mse_loss(out * self.mask, self.x_masked)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        return out, loss.detach()

    def optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def restore_parameters(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for param, kept in zip(self.params, saved):
                param.copy_(kept)  # in place: optimiser state and captured graphs keep their tensors

    def kept_parameters(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def final_output(self) -> torch.Tensor:
        """The notebook's final image: one more pass on the last perturbed input, still in train mode."""
        with autocast_context(self.device, self.config.precision):
            return self.net(self.net_input).float()  # eager: no graph or compiled variant needed once


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
    The host synchronises only at evaluation and backtracking iterations (every 50 by default), not
    at every step as the authors' notebook did (it scored two PSNRs on the CPU each iteration).
    Raises :class:`DivergenceError` on a non-finite loss, checked at each of those points and at the end.
    """
    device = torch.device(device)
    trainer = Trainer(observed, mask, config, seed=seed, device=device)
    ref = None if reference is None else to_tensor(reference, device)
    kept = trainer.kept_parameters()
    kept_psnr = 0.0  # the notebook's psnr_masked_last starts at 0
    backtrack_iterations: list[int] = []
    losses = torch.zeros(config.iterations, device=device)  # filled without host syncs
    curve: list[CurvePoint] = []

    timer = IterationTimer(device, warmup=min(config.timer_warmup, config.iterations - 1), window=config.timer_window)
    timer.start()
    ema: torch.Tensor | None = None  # (1, C, H, W), updated on the device without syncs
    for i in range(config.iterations):
        out, loss = trainer.forward_backward()
        losses[i] = loss
        if config.ema_decay > 0:
            ema = out.detach().clone() if ema is None else ema.lerp_(out.detach(), 1.0 - config.ema_decay)
        at_check = config.backtracking and i % config.backtrack_every == 0
        at_eval = i % config.eval_every == 0 or i == config.iterations - 1
        point = None
        if at_check or at_eval:
            loss_value = _finite_loss(losses, i)
            psnr_masked = psnr_from_mse(loss_value)
            if at_check:
                if psnr_masked - kept_psnr < -config.backtrack_drop_db:
                    trainer.restore_parameters(kept)
                    backtrack_iterations.append(i)
                else:
                    kept, kept_psnr = trainer.kept_parameters(), psnr_masked
            if at_eval:
                psnr = psnr_ema = None
                if ref is not None:
                    psnr = psnr_from_mse(F.mse_loss(out.detach(), ref).item())
                    psnr_ema = None if ema is None else psnr_from_mse(F.mse_loss(ema, ref).item())
                point = CurvePoint(i, loss_value, psnr_masked, psnr, psnr_ema)
                curve.append(point)
        # As in the notebook, the step runs even after a backtrack, with the gradients just computed.
        trainer.optimizer_step()
        timer.tick()
        if callback is not None:
            callback(i, point)
    timing = timer.summary()

    final = trainer.final_output()
    if not torch.isfinite(final).all():
        raise DivergenceError("the network's final output is not finite")
    return RestoreResult(
        output=to_numpy(final),
        output_ema=None if ema is None else to_numpy(ema),
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
