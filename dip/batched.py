"""Several independent restorations trained as one batched model: the building block for filling a GPU.

One paper network at 256x256 leaves most of a large GPU idle, and its few hundred kernels per step
cost more in launches than in arithmetic. K cells of the same image size (different images, masks,
seeds) can run as one model instead: their parameters stacked along a new leading dimension
(``torch.func.stack_module_state``) and the network applied with ``torch.func.vmap``, which turns
each convolution into one grouped convolution over the K networks. Everything else in the recipe
acts per network: BatchNorm's statistics are per network and channel, the loss is the sum of the K
masked MSEs (so each network gets exactly its own gradient), and Adam is elementwise.

Adam is :class:`BatchedAdam`: torch's Adam arithmetic on the stacked tensors, but with a step count
per cell and a per-cell mask of the steps to skip, so that one cell's backtracking, restore or
skipped non-finite step leaves the others alone. :class:`BatchedTrainer` is built from K
:class:`dip.trainer.Trainer` objects (fresh or loaded from checkpoints), so each cell keeps the
weights, z, noise generator and optimiser state its seed gives it alone, and :meth:`BatchedTrainer.cell`
hands the restoration loop one cell with the Trainer's backtracking interface. It takes the same
steps as K separate trainers, up to the rounding of the grouped arithmetic (tested). With
``cuda_graphs`` the whole batched step is replayed as CUDA graphs (dip.graphs), as for one cell.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from dip.graphs import WholeStepGraphs
from dip.recipe import RestoreConfig
from dip.trainer import Trainer, adam_step_device, autocast_context, step_context


def check_batchable(config: RestoreConfig) -> None:
    """Raise ValueError if cells of ``config`` cannot train as one batched model."""
    refused = [name for name, on in (("fp16", config.precision == "fp16"), ("channels_last", config.channels_last),
                                     ("compile", config.compile), ("winograd", config.winograd), ("matmul_1x1", config.matmul_1x1)) if on]
    if refused:
        raise ValueError(f"batched cells run fp32 or bf16, contiguous, eager or as CUDA graphs; not with "
                         f"{', '.join(refused)}")


def _one_network(skeleton: torch.nn.Module, params: dict, buffers: dict, net_input: torch.Tensor) -> torch.Tensor:
    """The network ``skeleton`` (on the meta device) run with one cell's ``params`` and ``buffers``."""
    return functional_call(skeleton, (params, buffers), (net_input,))


def _per_cell(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) -> (K, 1, ..., 1), broadcastable against a stacked tensor ``like`` (K, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class BatchedAdam:
    """Adam (torch.optim.Adam's default arithmetic, no weight decay) over parameters stacked (K, ...),
    with a step count per cell and the update of chosen cells skipped.

    ``step(skip)`` leaves cell k's parameters, moments and step count as they were where ``skip[k]``
    (a (K,) bool tensor) is true: the per-cell equivalent of fused Adam's ``found_inf``.
    """

    def __init__(self, params: list[torch.Tensor], cells: int, lr: float, betas: tuple[float, float],
                 eps: float) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        # float64 for the bias corrections: 1 - 0.999**t in float32 would be off by ~1e-4 relative
        self.steps = torch.zeros(cells, dtype=torch.float64, device=params[0].device)

    @torch.no_grad()
    def step(self, skip: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        take = skip.logical_not()
        self.steps += take
        bias_correction1 = 1 - beta1 ** self.steps  # (K,)
        bias_correction2_sqrt = (1 - beta2 ** self.steps).sqrt().float()
        step_size = (self.lr / bias_correction1).float()
        for param, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            grad = param.grad
            keep = _per_cell(take, param)
            m.copy_(torch.where(keep, m.lerp(grad, 1 - beta1), m))
            v.copy_(torch.where(keep, v * beta2 + (1 - beta2) * grad * grad, v))
            denom = v.sqrt() / _per_cell(bias_correction2_sqrt, v) + self.eps
            update = _per_cell(step_size, param) * m / denom
            param.copy_(torch.where(keep, param - update, param))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            param.grad = None


class BatchedTrainer:
    """K cells, one optimisation step for all: ``forward_backward()`` then ``optimizer_step(skip)``."""

    def __init__(self, trainers: list[Trainer]) -> None:
        if not trainers:
            raise ValueError("need at least one trainer")
        first = trainers[0]
        shapes = {tuple(t.z.shape) for t in trainers}
        configs = {t.config for t in trainers}
        if len(shapes) > 1 or len(configs) > 1:
            raise ValueError(f"batched cells need one input shape and one recipe, got shapes {sorted(shapes)}")
        config = first.config
        check_batchable(config)
        self.trainers, self.config, self.device = trainers, config, first.device
        # (K, ...) leaves: each network's parameters and BatchNorm buffers stacked, copied from the trainers
        params, buffers = stack_module_state([t.net for t in trainers])
        self.params = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
        self.buffers = {name: b.clone() for name, b in buffers.items()}
        self.skeleton = copy.deepcopy(first.net).to("meta")  # structure only; weights come from self.params
        self.mask = torch.stack([t.mask for t in trainers])  # (K, 1, 1, H, W)
        self.x_masked = torch.stack([t.x_masked for t in trainers])  # (K, 1, C, H, W)
        group = first.optimizer.param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError("batched cells implement Adam without weight decay, amsgrad or maximize")
        self.optimizer = BatchedAdam(list(self.params.values()), len(trainers), group["lr"], group["betas"],
                                     group["eps"])
        # Where the recipe's Adam is fused it skips a non-finite step on the device; plain Adam applies it.
        self.skips_non_finite_steps = first.skips_non_finite_steps
        self.found_inf = torch.zeros(len(trainers), dtype=torch.bool, device=self.device)
        for k, trainer in enumerate(trainers):
            self.cell(k).restore_optimizer_state(trainer.optimizer.state_dict())  # a resumed cell's Adam
        # Over the skeleton, not a bound method: one would hold this trainer in a reference cycle, which
        # only a garbage collection frees (its tensors counted in the next cell's peak memory).
        self._model = vmap(partial(_one_network, self.skeleton), in_dims=(0, 0, 0))
        self.last_inputs: torch.Tensor | None = None
        # The host's skips for the next optimiser step (K,), copied to the device only when they change
        self.skip = torch.zeros(len(trainers), dtype=torch.bool, device=self.device)
        self._skip_on_host = [False] * len(trainers)
        self.graphs = WholeStepGraphs(self) if config.cuda_graphs else None  # the whole step, replayed

    def __len__(self) -> int:
        return len(self.trainers)

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All K cells forward and back. Returns (outputs (K, 1, C, H, W), losses (K,)), without host reads."""
        with step_context(self.device, self.config):
            if self.graphs is not None:
                return self.graphs.forward_backward()
            return self.eager_forward_backward()

    def optimizer_step(self, skip: list[bool] | None = None) -> None:
        """One Adam step for every cell but those ``skip`` names (and, where Adam is fused, those whose
        loss or gradients are not finite: skipped on the device, as each Trainer alone skips them)."""
        skip = [False] * len(self) if skip is None else list(skip)
        if skip != self._skip_on_host:
            self.skip.copy_(torch.tensor(skip))
            self._skip_on_host = skip
        with step_context(self.device, self.config):
            if self.graphs is not None:
                self.graphs.optimizer_step()
            else:
                self.eager_optimizer_step()

    def eager_forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad()
        # (K, 1, 32, H, W): each cell's next input, from its own generator (as its Trainer draws it alone)
        return self._forward_loss_backward(torch.stack([t.next_input() for t in self.trainers]))

    def graph_forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        for trainer in self.trainers:
            trainer.draw_input(walk=True)  # captured after the warm-up steps
        return self._forward_loss_backward(torch.stack([t.net_input for t in self.trainers]))

    def count_step(self) -> None:
        for trainer in self.trainers:
            trainer.count_step()

    def generators(self) -> list[torch.Generator]:
        return [t.noise_gen for t in self.trainers]

    def _forward_loss_backward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_inputs = inputs
        with autocast_context(self.device, self.config.precision, cache_enabled=not self.config.cuda_graphs):
            out = self._model(self.params, self.buffers, inputs)
        out = out.float()  # the loss is computed in fp32
        per_pixel = F.mse_loss(out * self.mask, self.x_masked, reduction="none")  # (K, 1, C, H, W)
        losses = per_pixel.flatten(1).mean(dim=1)  # (K,): each cell's masked MSE over all its pixels
        losses.sum().backward()  # d(sum)/d(params of cell k) = d(loss_k)/d(params of cell k)
        if self.skips_non_finite_steps:
            self._find_non_finite(losses)
        return out.detach(), losses.detach()

    def _find_non_finite(self, losses: torch.Tensor) -> None:
        """found_inf[k] <- whether cell k's loss or any of its gradients is not finite, on the device."""
        finite = torch.isfinite(losses)
        for param in self.params.values():
            finite &= torch.isfinite(param.grad).flatten(1).all(dim=1)
        torch.logical_not(finite, out=self.found_inf)

    def eager_optimizer_step(self) -> None:
        self.optimizer.step(self.skip | self.found_inf if self.skips_non_finite_steps else self.skip)

    @torch.no_grad()
    def final_outputs(self) -> torch.Tensor:
        """(K, 1, C, H, W): each network on its last input, in train mode, as Trainer.final_output does."""
        with step_context(self.device, self.config), autocast_context(self.device, self.config.precision):
            return self._model(self.params, self.buffers, self.last_inputs).float()

    def cell_parameters(self, k: int) -> dict[str, torch.Tensor]:
        """Cell k's parameters, named as in its own network's ``named_parameters()``."""
        return {name: p[k].detach() for name, p in self.params.items()}

    def cell(self, k: int) -> BatchedCell:
        return BatchedCell(self, k)


class BatchedCell:
    """Cell k of a :class:`BatchedTrainer`, with the parameter and optimiser-state interface of a
    :class:`dip.trainer.Trainer` that the restoration loop's backtracking uses. Optimiser states are
    torch.optim.Adam's ``state_dict()`` format, so a batched cell's checkpoint resumes alone and back."""

    def __init__(self, batch: BatchedTrainer, k: int) -> None:
        self.batch, self.k = batch, k

    def kept_parameters(self) -> list[torch.Tensor]:
        return [p[self.k].detach().clone() for p in self.batch.params.values()]

    @torch.no_grad()
    def restore_parameters(self, saved: list[torch.Tensor]) -> None:
        for param, kept in zip(self.batch.params.values(), saved):
            param[self.k].copy_(kept)

    def kept_optimizer_state(self) -> dict:
        adam, k = self.batch.optimizer, self.k
        trainer = self.batch.trainers[k]
        groups = copy.deepcopy(trainer.optimizer.state_dict()["param_groups"])
        if not adam.steps[k]:
            return {"state": {}, "param_groups": groups}  # as torch's Adam has it before its first step
        # where torch's Adam of this cell alone keeps its step count
        step_device = adam_step_device(trainer.optimizer.param_groups[0], self.batch.device)
        step = adam.steps[k].to(torch.float32).to(step_device)
        state = {j: {"step": step.clone(), "exp_avg": m[k].clone(), "exp_avg_sq": v[k].clone()}
                 for j, (m, v) in enumerate(zip(adam.exp_avg, adam.exp_avg_sq))}
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def restore_optimizer_state(self, kept: dict) -> None:
        adam, k = self.batch.optimizer, self.k
        for j, (m, v) in enumerate(zip(adam.exp_avg, adam.exp_avg_sq)):
            state = kept["state"].get(j)
            m[k].copy_(state["exp_avg"] if state else torch.zeros_like(m[k]))
            v[k].copy_(state["exp_avg_sq"] if state else torch.zeros_like(v[k]))
        first = kept["state"].get(0)
        adam.steps[k] = float(first["step"]) if first else 0.0

    def state_dict(self) -> dict:
        """This cell's state in :meth:`Trainer.state_dict`'s format (live tensors: serialise at once)."""
        batch, k = self.batch, self.k
        trainer = batch.trainers[k]
        # Cloned: p[k] is a view of the (K, ...) stack, and torch.save writes a view's whole storage,
        # so each cell's checkpoint would hold all K cells' weights.
        net = {name: p[k].detach().clone() for name, p in batch.params.items()}
        net |= {name: b[k].clone() for name, b in batch.buffers.items()}
        net = {name: net[name] for name in trainer.net.state_dict()}  # the module's own key order
        return trainer.state_dict() | {"net": net, "optimizer": self.kept_optimizer_state()}
