"""One optimisation step of the Deep Image Prior recipe, and the state it acts on.

:class:`Trainer` holds the network, Adam, the fixed input z and the noise generator; one iteration is
``forward_backward()`` (the masked MSE of one perturbed input and its gradients) then
``optimizer_step()``, which leaves the state unchanged on the device when the loss or a gradient
is not finite, where the optimiser can (fused Adam, or a GradScaler): no host read per step. With
``cuda_graphs`` both halves are replayed as CUDA graphs (:mod:`dip.graphs`). On CUDA each half runs with
the trainer's device current and its own TF32 and autotuning flags (:func:`step_context`). The loop around it
(evaluation, backtracking, divergence, checkpoints, timing) is :func:`dip.restore.restore`; the
speed benchmark times the step alone.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dip import heap
from dip.conv import switch_convolutions
from dip.graphs import WholeStepGraphs
from dip.inputs import NetInput
from dip.recipe import RestoreConfig
from dip.seeding import seed_everything

# The autocast dtype of each of dip.recipe.PRECISIONS (None: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# The network restore() trains: a module whose weights the caller drew, or a zero-argument factory
# that Trainer calls right after seeding (the weights then depend on the seed alone).
Network = torch.nn.Module | Callable[[], torch.nn.Module]


def autocast_context(device: torch.device, precision: str, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    dtype = AUTOCAST_DTYPES[precision]
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


def check_device(config: RestoreConfig, device: torch.device) -> None:
    """Raise ValueError if ``config`` asks for CUDA-only execution switches on another device."""
    cuda_only = [name for name in ("tf32", "cudnn_benchmark", "cuda_graphs") if getattr(config, name)]
    if device.type != "cuda" and cuda_only:
        raise ValueError(f"{', '.join(cuda_only)} need{'s' if len(cuda_only) == 1 else ''} a CUDA device")
    if config.matmul_1x1 and config.compile:
        # torch 2.13's Inductor fails on it beside Winograd's band loop ("cannot determine truth value of
        # Relational"); compile fuses the network its own way, so the two are alternatives
        raise ValueError("matmul_1x1 and compile do not go together; leave one off (--no-matmul-1x1)")
    if config.keep_heap and device.type != "cpu":
        raise ValueError("keep_heap is a CPU switch (glibc's malloc); CUDA tensors do not use it")
    if config.keep_heap and not heap.available():
        raise ValueError("keep_heap needs glibc's malloc (Linux with glibc)")


@contextlib.contextmanager
def cuda_backend_flags(*, tf32: bool, cudnn_benchmark: bool) -> Iterator[None]:
    """TF32 (cuDNN convolutions and cuBLAS matmuls) and cuDNN autotuning as given inside the block, the
    previous values restored after: the flags are process-wide, and two trainers of one process (the
    speed benchmark's reference and fast paths) each need their own while they step."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = cudnn_benchmark, tf32, tf32
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before


@contextlib.contextmanager
def _cuda_step(device: torch.device, config: RestoreConfig) -> Iterator[None]:
    # The current device too: CUDA-graph capture, streams and events act on it, not on the tensors' device.
    with torch.cuda.device(device), cuda_backend_flags(tf32=config.tf32, cudnn_benchmark=config.cudnn_benchmark):
        yield


def step_context(device: torch.device, config: RestoreConfig) -> contextlib.AbstractContextManager:
    """What one step (or any work of a trainer's network) on ``device`` runs under: on CUDA, ``device``
    made the current device and ``config``'s TF32 and autotuning flags set; on a CPU with ``keep_heap``,
    malloc keeping freed memory (dip.heap); all restored after. Otherwise nothing."""
    if device.type == "cuda":
        return _cuda_step(device, config)
    return heap.kept_heap() if config.keep_heap else contextlib.nullcontext()


def adam_step_device(group: dict, device: torch.device) -> torch.device:
    """Where torch's Adam keeps the ``step`` counts of a param group on ``device``: on that device when
    fused or capturable (their kernels read it there), on the CPU otherwise (plain Adam reads each one
    on the host every step: on a GPU that would be one synchronisation per parameter)."""
    return device if group.get("fused") or group.get("capturable") else torch.device("cpu")


def with_steps_on(optimizer_state: dict, device: torch.device) -> dict:
    """A copy of an optimiser ``state_dict`` (shallow: its tensors are shared) with the ``step`` tensors
    on ``device``. torch's ``load_state_dict`` moves them for fused and capturable Adam but keeps plain
    Adam's where they are: a state loaded with ``map_location`` a GPU would keep them there."""
    states = {
        index: {key: value.to(device) if key == "step" and torch.is_tensor(value) else value
                for key, value in state.items()}
        for index, state in optimizer_state["state"].items()
    }
    return optimizer_state | {"state": states}


class Trainer:
    """The state of one restoration and its training step, split where backtracking acts.

    ``forward_backward()`` computes the loss of one perturbed input and its gradients;
    ``optimizer_step()`` applies them. The restoration loop (and the speed benchmark) call the two in
    turn; backtracking runs between them, as in the authors' closure.

    ``network`` maps z (``net_input``'s shape; by default the paper's, (1, config.net.in_channels, H, W))
    to (1, config.net.out_channels, H, W); whether it takes that input and gives an H x W output is the
    caller's to check (e.g. ``dip.nets.check_input_size``). A factory is called right after seeding, so
    the weights and then z follow from ``seed`` alone; a module keeps the weights the caller drew, and z
    is drawn right after seeding.
    """

    def __init__(self, observed: np.ndarray, mask: np.ndarray, config: RestoreConfig, network: Network, *, seed: int,
                 device: torch.device, net_input: NetInput | None = None) -> None:
        self.config = config
        self.device = device
        height, width = mask.shape
        channels = 1 if np.ndim(observed) == 2 else observed.shape[2]
        if np.shape(observed)[:2] != mask.shape:
            raise ValueError(f"observed {np.shape(observed)} and mask {mask.shape} differ in size")
        if channels != config.net.out_channels:
            raise ValueError(f"image has {channels} channels, the network outputs {config.net.out_channels}")
        check_device(config, device)
        # (TF32 and cuDNN autotuning are set around each step, by step_context, not here for the process.)

        spec = net_input or NetInput.paper(config, height, width)
        # Draw everything random on the CPU generator first: same weights and z on any device.
        seed_everything(seed)
        net = network if isinstance(network, torch.nn.Module) else network()  # a factory draws its weights here
        draw = torch.rand if spec.distribution == "uniform" else torch.randn
        z = draw(*spec.shape) * spec.scale  # (1, 32, H, W) for the paper's network
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.net = net.to(device, memory_format=memory_format).train()
        # (the convs of dip's networks, dip.conv; other modules' stay nn.Conv2d)
        switch_convolutions(self.net, winograd=config.winograd, matmul_1x1=config.matmul_1x1)
        self.z = z.to(device).contiguous(memory_format=memory_format)
        self.noise_gen = torch.Generator(device=device).manual_seed(seed)
        # Reused every step, and always drawn in the reference (NCHW) layout: normal_ fills memory in
        # order, so a channels_last buffer would give element (c, y, x) another draw than the reference
        # path does, and the paths would see different noise for one seed (measured: PSNR curves up to
        # 1.2 dB apart, where rounding moves them 1e-3 dB). The add into net_input converts the layout.
        self.noise_buffer = torch.empty(*spec.shape, device=device)  # z's shape
        # Likewise: z + std * noise is written into it ("fixed"), or it is the walking z ("cumulative").
        self.net_input = self.z.clone() if config.input_noise == "cumulative" else torch.empty_like(self.z)
        self.steps = 0
        self.mask = to_tensor(mask, device)  # (1, 1, H, W)
        self.x_masked = to_tensor(observed, device) * self.mask  # (1, C, H, W), dropped pixels zeroed
        self.params = list(self.net.parameters())
        # capturable: Adam's step count and bias corrections stay on the device, as CUDA graphs need
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, fused=config.fused_adam or None,
                                          capturable=config.cuda_graphs)
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
        # 1.0 where the last step's loss or a gradient was not finite; fused Adam then skips its update
        # (and its step count) on the device, as under a GradScaler, so no host read is needed to guard it.
        # (A GradScaler computes and applies its own flag.)
        self._guards_on_device = config.fused_adam and self.scaler is None
        self.found_inf = torch.zeros((), device=device)
        self._unit_scale = torch.ones((), device=device)
        if self._guards_on_device:
            self.optimizer.found_inf = self.found_inf  # read by torch.optim.Adam.step for fused kernels
        self.model = torch.compile(self.net) if config.compile else self.net
        self.graphs = WholeStepGraphs(self) if config.cuda_graphs else None  # the whole step, replayed

    @property
    def skips_non_finite_steps(self) -> bool:
        """Whether ``optimizer_step`` leaves the state as it was after a non-finite loss or gradient
        (fused Adam or a GradScaler). Plain Adam cannot: its update then writes NaN into the parameters."""
        return self.scaler is not None or self._guards_on_device

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One perturbed input through the network and back. Returns (output (1, C, H, W), loss)."""
        with step_context(self.device, self.config):
            if self.graphs is not None:
                return self.graphs.forward_backward()
            return self.eager_forward_backward()

    def optimizer_step(self) -> None:
        with step_context(self.device, self.config):
            if self.graphs is not None:
                self.graphs.optimizer_step()
            else:
                self.eager_optimizer_step()

    def eager_forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.next_input()
        self.optimizer.zero_grad(set_to_none=True)
        return self.forward_loss_backward()

    def forward_loss_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The network on ``net_input``, the masked loss, its gradients and the non-finite guard: device
        work only (what a CUDA graph captures). Returns (output (1, C, H, W), loss)."""
        # autocast's weight-cast cache must be off inside a captured region
        with autocast_context(self.device, self.config.precision, cache_enabled=not self.config.cuda_graphs):
            out = self.model(self.net_input)
        out = out.float()  # the loss is computed in fp32
        loss = F.mse_loss(out * self.mask, self.x_masked)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self._guards_on_device:
            self._find_non_finite(loss)
        return out, loss.detach()

    def graph_forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.draw_input(walk=True)  # captured after the warm-up steps: a walking z has left its start
        return self.forward_loss_backward()

    def count_step(self) -> None:
        self.steps += 1

    def generators(self) -> list[torch.Generator]:
        return [self.noise_gen]

    def next_input(self) -> torch.Tensor:
        """The next step's network input (1, 32, H, W), written into ``net_input`` from this cell's generator."""
        self.draw_input(walk=self.steps > 0)  # cumulative: the first step sees z itself, as in the seed reproduction
        self.steps += 1
        return self.net_input

    def draw_input(self, walk: bool) -> None:
        """Fresh noise into ``net_input``: around the fixed z, or (cumulative, where ``walk``) added to it."""
        if self.config.input_noise == "fixed":
            self.noise_buffer.normal_(generator=self.noise_gen)
            torch.add(self.z, self.noise_buffer, alpha=self.config.input_noise_std, out=self.net_input)
        elif walk:
            self.noise_buffer.normal_(generator=self.noise_gen)
            self.net_input.add_(self.noise_buffer, alpha=self.config.input_noise_std)

    def _find_non_finite(self, loss: torch.Tensor) -> None:
        """found_inf <- 1.0 if the loss or any gradient is not finite, computed on the device."""
        self.found_inf.copy_(torch.isfinite(loss.detach()).logical_not())
        grads = [p.grad for p in self.params if p.grad is not None]
        # GradScaler's fused check (it also multiplies by the inverse scale, here exactly 1)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self._unit_scale)

    def eager_optimizer_step(self) -> None:
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

    def kept_optimizer_state(self) -> dict:
        return copy.deepcopy(self.optimizer.state_dict())  # deep: the live state tensors change in place

    def restore_optimizer_state(self, kept: dict) -> None:
        if self.graphs is not None and self.graphs.captured:
            self._copy_optimizer_state(kept)
            return
        # load_state_dict keeps tensors that already have the right device and dtype: copy, or the
        # next steps would update the kept snapshot in place.
        self._load_optimizer_state(copy.deepcopy(kept))
        self.optimizer.zero_grad(set_to_none=True)

    def _load_optimizer_state(self, state: dict) -> None:
        """``state`` into Adam, its step counts where a fresh Adam of this trainer keeps them (a kept or
        checkpointed state may have been loaded onto the GPU whole)."""
        step_device = adam_step_device(self.optimizer.param_groups[0], self.device)
        self.optimizer.load_state_dict(with_steps_on(state, step_device))

    @torch.no_grad()
    def _copy_optimizer_state(self, kept: dict) -> None:
        """Adam's state as ``kept`` has it, copied into the live tensors that a captured graph updates (an
        empty ``kept``, taken before the first step, zeroes them: what Adam starts from)."""
        for j, param in enumerate(self.params):
            live, saved = self.optimizer.state[param], kept["state"].get(j)
            for key, value in live.items():
                if not torch.is_tensor(value):
                    continue
                if saved:
                    value.copy_(saved[key])
                else:
                    value.zero_()

    def state_dict(self) -> dict:
        """What a resumed Trainer needs to take the same next step (live tensors: serialise at once)."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "z": self.z,
            "net_input": self.net_input,
            "noise_gen": self.noise_gen.get_state(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])  # copies in place: memory format and captured graphs kept
        self._load_optimizer_state(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        with torch.no_grad():
            self.z.copy_(state["z"])
            self.net_input.copy_(state["net_input"])
        self.noise_gen.set_state(state["noise_gen"].cpu())  # a generator's state is a CPU byte tensor, on any device
        self.steps = int(state["steps"])

    @torch.no_grad()
    def final_output(self) -> torch.Tensor:
        """The notebook's final image: one more pass on the last perturbed input, still in train mode."""
        with step_context(self.device, self.config), autocast_context(self.device, self.config.precision):
            return self.net(self.net_input).float()  # eager: no graph or compiled variant needed once
