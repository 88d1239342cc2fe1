"""Several independent restorations trained as one batched model: the building block for filling a GPU.

One paper network at 256x256 leaves most of a large GPU idle, and its few hundred kernels per step
cost more in launches than in arithmetic. K cells of the same image size (different images, masks,
seeds) can run as one model instead: their parameters stacked along a new leading dimension
(``torch.func.stack_module_state``) and the network applied with ``torch.func.vmap``, which turns
each convolution into one grouped convolution over the K networks. Everything else in the recipe
acts per network: BatchNorm's statistics are per network and channel, the loss is the sum of the K
masked MSEs (so each network gets exactly its own gradient), and Adam is elementwise (so one Adam
over the stacked parameters is K independent Adams).

:class:`BatchedTrainer` is built from K :class:`dip.trainer.Trainer` objects, so each cell keeps the
weights, z and noise generator its seed gives it alone, and it takes the same steps as K separate
trainers, up to the rounding of the grouped arithmetic (tested). Not yet wired into the restoration
loop: backtracking, the non-finite guard and the records are per cell there (docs/speed.md, "The GPU path").
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from dip.trainer import Trainer


class BatchedTrainer:
    """K cells, one optimisation step for all: ``forward_backward()`` then ``optimizer_step()``."""

    def __init__(self, trainers: list[Trainer]) -> None:
        if not trainers:
            raise ValueError("need at least one trainer")
        first = trainers[0]
        shapes = {tuple(t.z.shape) for t in trainers}
        configs = {t.config for t in trainers}
        if len(shapes) > 1 or len(configs) > 1:
            raise ValueError(f"batched cells need one input shape and one recipe, got shapes {sorted(shapes)}")
        if first.config.precision != "fp32" or first.config.channels_last:
            raise ValueError("batched cells run fp32, contiguous (not yet bf16 or channels_last)")
        self.trainers = trainers
        self.config = first.config
        # (K, ...) leaves: each network's parameters and BatchNorm buffers stacked, copied from the trainers
        params, buffers = stack_module_state([t.net for t in trainers])
        self.params = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
        self.buffers = {name: b.clone() for name, b in buffers.items()}
        self.skeleton = copy.deepcopy(first.net).to("meta")  # structure only; weights come from self.params
        self.z = torch.stack([t.z for t in trainers])  # (K, 1, 32, H, W)
        self.mask = torch.stack([t.mask for t in trainers])  # (K, 1, 1, H, W)
        self.x_masked = torch.stack([t.x_masked for t in trainers])  # (K, 1, C, H, W)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.config.lr,
                                          fused=self.config.fused_adam or None)
        self._model = vmap(self._one_network, in_dims=(0, 0, 0))

    def _one_network(self, params: dict, buffers: dict, net_input: torch.Tensor) -> torch.Tensor:
        return functional_call(self.skeleton, (params, buffers), (net_input,))

    def _net_inputs(self) -> torch.Tensor:
        """(K, 1, 32, H, W): each cell's z plus fresh noise from that cell's own generator."""
        inputs = []
        for trainer in self.trainers:
            trainer.noise_buffer.normal_(generator=trainer.noise_gen)
            inputs.append(torch.add(trainer.z, trainer.noise, alpha=self.config.input_noise_std))  # as Trainer does
        return torch.stack(inputs)

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All K cells forward and back. Returns (outputs (K, 1, C, H, W), losses (K,)), without host reads."""
        if self.config.input_noise != "fixed":
            raise ValueError("batched cells support the paper's fixed input noise only")
        self.optimizer.zero_grad(set_to_none=True)
        out = self._model(self.params, self.buffers, self._net_inputs())
        per_pixel = F.mse_loss(out * self.mask, self.x_masked, reduction="none")  # (K, 1, C, H, W)
        losses = per_pixel.flatten(1).mean(dim=1)  # (K,): each cell's masked MSE over all its pixels
        losses.sum().backward()  # d(sum)/d(params of cell k) = d(loss_k)/d(params of cell k)
        return out.detach(), losses.detach()

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def cell_parameters(self, k: int) -> dict[str, torch.Tensor]:
        """Cell k's parameters, named as in its own network's ``named_parameters()``."""
        return {name: p[k].detach() for name, p in self.params.items()}
