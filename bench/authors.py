"""The speed anchor: the authors' network and training step as they wrote them, re-implemented.

``reports/speed.md`` states how much faster dip-bench's paths are than the code the paper ran. The
authors' code is not a dependency, so this module rebuilds what matters for its speed, written the
way their ``skip`` network and inpainting loop are written (docs/speed.md, "The anchor"):

- the network is one ``nn.Sequential`` tree with a ``Concat`` module that centre-crops its inputs to
  a common size before ``torch.cat``; every conv is ``Sequential(ReflectionPad2d(k // 2), Conv2d)``,
  a 1x1 conv included (a zero-width padding: an extra copy of its input); LeakyReLU(0.2) in place;
  bilinear ``nn.Upsample``; a final 1x1 conv and ``nn.Sigmoid``;
- one step: fresh noise around the saved input, forward, ``MSELoss(out * mask, img * mask)`` with the
  target product taken every step, backward, ``torch.optim.Adam`` (default, not fused), and the
  loss read on the host (their loop prints it every iteration); fp32, contiguous tensors, eager.

Its parameters come in the same order as :class:`dip.nets.SkipNet`'s, so a test copies one into the
other and checks that both compute the same function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dip.nets.config import SkipNetConfig


class Concat(nn.Module):
    """Runs each branch on the input and concatenates along ``dim``, centre-cropping to the smallest."""

    def __init__(self, dim: int, *branches: nn.Module) -> None:
        super().__init__()
        self.dim = dim
        for index, branch in enumerate(branches):
            self.add_module(str(index), branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self._modules.values()]
        height = min(o.shape[2] for o in outputs)
        width = min(o.shape[3] for o in outputs)
        cropped = []
        for o in outputs:  # the authors crop unconditionally; equal sizes make it a no-op slice
            top, left = (o.shape[2] - height) // 2, (o.shape[3] - width) // 2
            cropped.append(o[:, :, top:top + height, left:left + width])
        return torch.cat(cropped, dim=self.dim)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d((kernel - 1) // 2), nn.Conv2d(c_in, c_out, kernel, stride, padding=0))


def _bn_act(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True)]


def authors_skip(config: SkipNetConfig | None = None) -> nn.Sequential:
    """The skip network built the way the authors' ``skip()`` builds it (same layers as SkipNet)."""
    cfg = config or SkipNetConfig()
    model = nn.Sequential()
    level = model
    depth_in = cfg.in_channels
    for i in range(cfg.scales):
        deepest = i == cfg.scales - 1
        skip = nn.Sequential(_conv(depth_in, cfg.channels_skip, cfg.kernel_skip), *_bn_act(cfg.channels_skip))
        deeper = nn.Sequential(
            _conv(depth_in, cfg.channels_down, cfg.kernel_down, 2), *_bn_act(cfg.channels_down),
            _conv(cfg.channels_down, cfg.channels_down, cfg.kernel_down), *_bn_act(cfg.channels_down),
        )
        deeper_main = nn.Sequential()
        if not deepest:
            deeper.append(deeper_main)
        deeper.append(nn.Upsample(scale_factor=2, mode=cfg.upsample_mode))
        level.append(Concat(1, skip, deeper))
        k = cfg.channels_down if deepest else cfg.channels_up
        level.append(nn.BatchNorm2d(cfg.channels_skip + k))
        level.extend([_conv(cfg.channels_skip + k, cfg.channels_up, cfg.kernel_up), *_bn_act(cfg.channels_up)])
        level.extend([_conv(cfg.channels_up, cfg.channels_up, 1), *_bn_act(cfg.channels_up)])
        depth_in = cfg.channels_down
        level = deeper_main
    model.extend([_conv(cfg.channels_up, cfg.out_channels, 1), nn.Sigmoid()])
    return model


class AuthorsStep:
    """The authors' training step on one image: ``step()`` is one iteration of their loop.

    Conservative as a speed anchor: the notebook's closure also computes two PSNRs per step
    (``compare_psnr`` of the masked and of the full output, each a copy of the output to the host
    and a NumPy pass), which this step leaves out, so the authors' code as run is somewhat slower
    than timed here and every "fast vs authors" ratio is a lower bound."""

    def __init__(self, image: np.ndarray, mask: np.ndarray, seed: int = 0, config: SkipNetConfig | None = None,
                 noise_std: float = 0.03, lr: float = 1e-3, device: torch.device | str = "cpu") -> None:
        cfg = config or SkipNetConfig()
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.net = authors_skip(cfg).to(self.device)
        height, width = mask.shape
        self.net_input_saved = (torch.rand(1, cfg.in_channels, height, width) * 0.1).to(self.device)  # (1, 32, H, W)
        self.noise = self.net_input_saved.clone()
        self.img = torch.from_numpy(np.asarray(image, np.float32))[None, None].to(self.device)  # (1, 1, H, W)
        self.mask = torch.from_numpy(np.asarray(mask, np.float32))[None, None].to(self.device)
        self.noise_std = noise_std
        self.mse = nn.MSELoss()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)

    def step(self) -> float:
        self.optimizer.zero_grad()
        net_input = self.net_input_saved + self.noise.normal_() * self.noise_std
        out = self.net(net_input)
        loss = self.mse(out * self.mask, self.img * self.mask)
        loss.backward()
        value = loss.item()  # printed every iteration in their loop
        self.optimizer.step()
        return value
