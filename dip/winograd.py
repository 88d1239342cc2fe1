"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3), in torch ops (an execution
switch, ``RestoreConfig.winograd``: the networks' convs are :class:`dip.conv.Conv2d`, which is
``nn.Conv2d`` until :func:`dip.conv.switch_convolutions` turns this algorithm on).

Each 4x4 tile of the output is computed from the 6x6 input tile around it (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016):

    Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A        g: 3x3 filter, d: 6x6 input tile

The elementwise product, summed over the input channels, is for each of the 36 positions of the
transformed tile one (K x C) @ (C x tiles) matmul: 36 batched matmuls do the work of the
convolution with 36 multiplications per 16 outputs instead of 144, 4x fewer. The transforms are
passes over the tiles: the input's is a 6x6 stride-4 convolution with 36 fixed filters, the
output's a (16 x 36) matmul.

The backward pass is the same transform-matmul-transform: the weight gradient is one batched
matmul of the transformed output gradient with the transformed input saved by the forward pass,
and the input gradient is a full convolution of the output gradient with the rotated filters,
itself computed as a Winograd convolution. fp32 only, batch 1 (the recipe's).
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

TILE = 4  # output tile side m of F(m x m, 3 x 3)
KERNEL = 3
SPAN = TILE + KERNEL - 1  # input tile side: 6
# The interpolation points of F(4, 3): m + r - 2 finite points and infinity. 0, +-1, +-2 keep the
# transforms' entries small (|B^T| <= 5, |A^T| <= 8), the usual choice for fp32.
POINTS = (0, 1, -1, 2, -2)
# Smallest output side where Winograd is used: measured per layer of the paper network (docs/speed.md,
# "Winograd"); below it the transforms and the per-call overhead cost more than the multiplications saved.
MIN_SIDE = 64

Matrix = list[list[Fraction]]


def _evaluation(points: tuple[int, ...], k: int) -> Matrix:
    """(len(points) + 1, k): a polynomial of k coefficients evaluated at each point and at infinity
    (its leading coefficient)."""
    rows = [[Fraction(a) ** j for j in range(k)] for a in points]
    return rows + [[Fraction(int(j == k - 1)) for j in range(k)]]


def _inverse(matrix: Matrix) -> Matrix:
    """Exact inverse by Gauss-Jordan elimination (the matrices are 6 x 6 Vandermonde-like)."""
    n = len(matrix)
    rows = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col])]
    return [row[n:] for row in rows]


def _transpose(matrix: Matrix) -> Matrix:
    return [list(column) for column in zip(*matrix)]


def toom_cook(points: tuple[int, ...] = POINTS, kernel: int = KERNEL) -> tuple[Matrix, Matrix, Matrix]:
    """Exact (A^T, G, B^T) of F(m, r) for r = ``kernel`` and m = len(points) + 2 - r, such that the
    correlation y_i = sum_k d_(i+k) g_k (i < m) is A^T [(G g) (.) (B^T d)].

    Correlation is the transpose of the polynomial product that Toom-Cook evaluates at the points
    and interpolates back: with E_k the evaluation matrix of k coefficients, y = E_m^T diag(E_r g)
    E_n^(-T) d (n = m + r - 1). Each row of B^T = E_n^(-T) is scaled to integers and the same row of
    G divided by that factor, so the input transform needs no fractions."""
    n = len(points) + 1
    m = n - kernel + 1
    a_t = _transpose(_evaluation(points, m))  # (m, n)
    g = _evaluation(points, kernel)  # (n, r)
    b_t = _transpose(_inverse(_evaluation(points, n)))  # (n, n)
    for j in range(n):
        scale = math.lcm(*(v.denominator for v in b_t[j]))
        b_t[j] = [v * scale for v in b_t[j]]
        g[j] = [v / scale for v in g[j]]
    return a_t, g, b_t


class Transforms:
    """The 2-D transforms of F(4x4, 3x3) as tensors: ``output`` A^T (x) A^T (16, 36), ``filter``
    G (x) G (36, 9), and ``input`` B^T (x) B^T as 36 filters of 6x6 (36, 1, 6, 6), so that the input
    transform of every tile is one stride-4 convolution."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        a_t, g, b_t = (torch.tensor([[float(v) for v in row] for row in matrix], dtype=torch.float64)
                       for matrix in toom_cook())
        self.output = torch.kron(a_t, a_t).to(device, dtype)  # (16, 36)
        self.filter = torch.kron(g, g).to(device, dtype)  # (36, 9)
        self.input = torch.kron(b_t, b_t).reshape(SPAN * SPAN, 1, SPAN, SPAN).to(device, dtype)  # (36, 1, 6, 6)


@lru_cache(maxsize=None)
def transforms(device: torch.device, dtype: torch.dtype = torch.float32) -> Transforms:
    return Transforms(device, dtype)


def transform_input(x: torch.Tensor, t: Transforms) -> torch.Tensor:
    """(1, C, 4 th + 2, 4 tw + 2) -> (36, C, th tw): B^T d B of every 6x6 tile (stride 4), a strided view
    of the convolution's (C, 36, th, tw) output that the batched matmuls read in place."""
    channels, height, width = x.shape[1:]
    tiles = F.conv2d(x.reshape(channels, 1, height, width), t.input, stride=TILE)  # (C, 36, th, tw)
    return tiles.view(channels, SPAN * SPAN, -1).transpose(0, 1)


def transform_filter(weight: torch.Tensor, t: Transforms) -> torch.Tensor:
    """(K, C, 3, 3) -> (36, K, C): G g G^T of every filter."""
    out_channels, in_channels = weight.shape[:2]
    return (t.filter @ weight.reshape(out_channels * in_channels, KERNEL * KERNEL).t()).view(-1, out_channels, in_channels)


# Scratch buffers of the band loops, by (use, shape, dtype, device), kept for the next call: a fresh
# buffer of tens of MB would be page-faulted in again at every step (glibc's malloc serves blocks over
# 32 MB by mmap and frees them back), which costs about as much as the transforms themselves.
# Single-threaded use only, as the training step is.
_scratch: dict[tuple, torch.Tensor] = {}


def scratch(use: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    key = (use, shape, like.dtype, like.device)
    if key not in _scratch:
        _scratch[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return _scratch[key]


def clear_scratch() -> None:
    _scratch.clear()


# Tile rows per band: each band's transformed input is at most about this many bytes, so that a band's
# input, transform, matmul output and output transform stay in the last-level cache (docs/speed.md).
BAND_BYTES = 4 << 20


def bands(tiles_h: int, tiles_w: int, channels: int) -> list[tuple[int, int]]:
    """[(first, end)) tile rows of each band of a (channels, 4 tiles_h, 4 tiles_w) transform."""
    rows = max(1, BAND_BYTES // (SPAN * SPAN * channels * tiles_w * 4))
    return [(r, min(r + rows, tiles_h)) for r in range(0, tiles_h, rows)]


def transform_output_into(out: torch.Tensor, m: torch.Tensor, t: Transforms, bias: torch.Tensor | None) -> None:
    """A^T M A of every tile of m (36, K, th tw) written into out (1, K, 4 th, 4 tw), a view of rows of a
    contiguous tensor, with the bias added in the same pass."""
    channels, tiles_h, tiles_w = out.shape[1], out.shape[2] // TILE, out.shape[3] // TILE
    y = torch.mm(t.output, m.view(SPAN * SPAN, -1), out=scratch("y", (TILE * TILE, m[0].numel()), m))
    y = y.view(TILE, TILE, channels, tiles_h, tiles_w).permute(2, 3, 0, 4, 1)  # (K, th, 4, tw, 4)
    tiled = out.view(channels, tiles_h, TILE, tiles_w, TILE)
    if bias is None:
        tiled.copy_(y)
    else:
        torch.add(y, bias.view(channels, 1, 1, 1, 1), out=tiled)


def output_adjoint(grad: torch.Tensor, t: Transforms) -> torch.Tensor:
    """(1, K, 4 th, 4 tw) -> (36, K, th tw): the transpose of A^T M A (a scratch buffer)."""
    channels, tiles_h, tiles_w = grad.shape[1], grad.shape[2] // TILE, grad.shape[3] // TILE
    count = channels * tiles_h * tiles_w
    tiles = scratch("grad tiles", (TILE * TILE, count), grad)
    tiles.view(TILE, TILE, channels, tiles_h, tiles_w).copy_(
        grad.reshape(channels, tiles_h, TILE, tiles_w, TILE).permute(2, 4, 0, 1, 3))
    g_m = torch.mm(t.output.t(), tiles, out=scratch("grad m", (SPAN * SPAN, count), grad))
    return g_m.view(SPAN * SPAN, channels, -1)


def correlate_band(out: torch.Tensor, x: torch.Tensor, filters: torch.Tensor, t: Transforms,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """The valid 3x3 correlation of x (1, C, 4 th + 2, 4 tw + 2) with the filters' transform (36, K, C),
    written into out (1, K, 4 th, 4 tw). Returns the input's transform (36, C, th tw)."""
    v = transform_input(x, t)
    m = torch.bmm(filters, v, out=scratch("m", (SPAN * SPAN, filters.shape[1], v.shape[2]), v))  # the 36 matmuls
    transform_output_into(out, m, t, bias)
    return v


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class WinogradConv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` for a padded (1, C, H + 2, W + 2) fp32 input and (K, C, 3, 3)
    filters, H and W multiples of 4, by F(4x4, 3x3) forward and backward, band by band of tile rows.
    (fp64 works too, for tests of the algebra; the networks use it in fp32 only.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        t = transforms(x.device, x.dtype)
        x = x.contiguous()
        channels, height, width = x.shape[1], x.shape[2] - 2, x.shape[3] - 2
        out = torch.empty(1, weight.shape[0], height, width, dtype=x.dtype, device=x.device)
        filters = transform_filter(weight, t)
        kept = [correlate_band(out[:, :, TILE * r0:TILE * r1], x[:, :, TILE * r0:TILE * r1 + 2], filters, t, bias)
                for r0, r1 in bands(height // TILE, width // TILE, max(channels, weight.shape[0]))]
        ctx.save_for_backward(weight, *kept)  # each band's (36, C, band tiles), for the weight gradient
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, *kept = ctx.saved_tensors
        grad = grad.contiguous()  # (1, K, H, W)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = weight_gradient(grad, kept, weight, transforms(grad.device, grad.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        if ctx.needs_input_grad[0]:
            grad_x = input_gradient(grad, weight, transforms(grad.device, grad.dtype))
        return grad_x, grad_w, grad_b


def weight_gradient(grad: torch.Tensor, kept: list[torch.Tensor], weight: torch.Tensor, t: Transforms) -> torch.Tensor:
    """dL/dw (K, C, 3, 3) from the output gradient (1, K, H, W) and the bands' input transforms:
    sum over tiles of (A grad A^T) V^T per transform position, then G^T . G."""
    height, width = grad.shape[2:]
    g_u = None  # (36, K, C)
    for (r0, r1), v in zip(bands(height // TILE, width // TILE, max(weight.shape[:2])), kept):
        g_m = output_adjoint(grad[:, :, TILE * r0:TILE * r1], t)  # (36, K, band tiles)
        g_u = torch.bmm(g_m, v.transpose(1, 2)) if g_u is None else g_u.baddbmm_(g_m, v.transpose(1, 2))
    return (g_u.reshape(SPAN * SPAN, -1).t() @ t.filter).view_as(weight)


def input_gradient(grad: torch.Tensor, weight: torch.Tensor, t: Transforms) -> torch.Tensor:
    """dL/dx (1, C, H + 2, W + 2): the full correlation of the output gradient (1, K, H, W), zero-padded
    by 2, with the filters rotated by 180 degrees and their channels swapped, itself by F(4x4, 3x3). Its
    output side is rounded up to a multiple of 4 (more zeros below and to the right) and cropped."""
    height, width = grad.shape[2:]
    out_h, out_w = _round_up(height + 2, TILE), _round_up(width + 2, TILE)
    out = torch.empty(1, weight.shape[1], out_h, out_w, dtype=grad.dtype, device=grad.device)
    rotated = transform_filter(weight.flip(2, 3).transpose(0, 1), t)  # (36, C, K)
    for r0, r1 in bands(out_h // TILE, out_w // TILE, max(weight.shape[:2])):
        top, bottom = TILE * r0 - 2, TILE * r1  # the padded gradient's rows [4 r0, 4 r1 + 2) in grad's rows
        rows = grad[:, :, max(top, 0):min(bottom, height)]
        padded = F.pad(rows, (2, out_w - width, max(0, -top), max(0, bottom - height)))
        correlate_band(out[:, :, TILE * r0:TILE * r1], padded, rotated, t)
    return out[:, :, :height + 2, :width + 2]


def winograd_fits(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv`` on ``x`` is a case :class:`WinogradConv3x3` computes and where it pays: 3x3,
    stride 1, undilated, ungrouped, fp32 outside autocast, batch 1, an output side of at least
    :data:`MIN_SIDE` pixels and both sides multiples of 4."""
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return False
    if conv.padding_mode != "zeros" or not isinstance(conv.padding, tuple):
        return False
    if x.dim() != 4 or x.shape[0] != 1 or x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
        return False
    height = x.shape[2] + 2 * conv.padding[0] - 2
    width = x.shape[3] + 2 * conv.padding[1] - 2
    return min(height, width) >= MIN_SIDE and height % TILE == 0 and width % TILE == 0
