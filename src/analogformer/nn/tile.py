"""Tile partition of a weight matrix and the DAC / ADC quantizers.

A tile partition is a split of one tensor (sizes along rows = inputs and columns =
outputs), never a module per tile. Quantizers use straight-through gradients.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch


def split_sizes(n: int, tile: int, policy: str = "balanced") -> List[int]:
    """Sizes of the pieces a dimension of length `n` is cut into for tiles of size `tile`.

    "balanced": the fewest tiles (ceil(n / tile)), sizes differing by at most one
    (aihwkit's split); "fill_first": full tiles first, the remainder last (seed 000's
    "512-first"). Both use the same number of tiles; they differ in how full each is.
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"split_sizes: dimension must be a positive int, got {n!r}")
    if not isinstance(tile, int) or tile <= 0:
        raise ValueError(f"split_sizes: tile size must be a positive int, got {tile!r}")
    k = math.ceil(n / tile)
    if policy == "balanced":
        base, extra = divmod(n, k)
        return [base + 1] * extra + [base] * (k - extra)
    if policy == "fill_first":
        return [tile] * (k - 1) + [n - tile * (k - 1)]
    raise ValueError(f"split_sizes: unknown policy {policy!r}; use 'balanced' or 'fill_first'")


def split_offsets(sizes: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


def levels(bits: int) -> int:
    """Positive levels of a symmetric signed quantizer with `bits` bits (e.g. 8 -> 127)."""
    return 2 ** (bits - 1) - 1


def quantize_symmetric(x: torch.Tensor, bits: int, bound) -> torch.Tensor:
    """Clip to [-bound, bound] and round to 2^(bits-1)-1 levels per side.

    Straight-through estimator: the rounding passes gradients unchanged; clipping passes
    gradient only inside the range (a value that saturates gets no gradient). `bound` may
    be a tensor (learned range) and receives gradient through the clipped values.
    """
    n = levels(bits)
    clipped = torch.maximum(torch.minimum(x, bound), -bound) if torch.is_tensor(bound) \
        else x.clamp(-bound, bound)
    step = bound / n
    q = torch.round(clipped / step) * step
    if torch.is_grad_enabled() and x.requires_grad:
        return clipped + (q - clipped).detach()
    return q


def dac_normalize(x: torch.Tensor, input_range: torch.Tensor, bits: int) -> torch.Tensor:
    """DAC: inputs -> integer-valued levels in [-L, L] scaled to [-1, 1] units of r.

    Returns x_q / r, i.e. the normalized input the crossbar rows see. Gradient flows to x
    inside the range (STE) and to r through the division for in-range values; the caller
    multiplies the output by r again so clipped inputs give r its gradient (as in PACT).
    """
    n = levels(bits)
    xn = x / input_range
    clipped = xn.clamp(-1.0, 1.0)
    q = torch.round(clipped * n) / n
    if torch.is_grad_enabled() and (x.requires_grad or input_range.requires_grad):
        return clipped + (q - clipped).detach()
    return q


def adc_quantize(y: torch.Tensor, bits: int, bound: float) -> torch.Tensor:
    """ADC over [-bound, bound] with 2^(bits-1)-1 levels per side (STE gradient)."""
    return quantize_symmetric(y, bits, bound)


# ---------------------------------------------------------------- fused training kernels
# The same straight-through semantics as `dac_normalize` / `adc_quantize` (kept as the
# composed reference the tests compare against), written as autograd Functions that keep
# one boolean mask instead of the half-dozen full-size temporaries the composed version
# leaves for backward, and that work in DAC / ADC code units so no pass rescales the
# activations (HWA training speed).

def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    dims = [d for d, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


class DacSTE(torch.autograd.Function):
    """x -> DAC codes round(clamp(x·n/r, -n, n)); d/dx = n/r and d/dr = −x·n/r² inside
    the range (a code is x_q/r·n: one code = r/n input units)."""

    @staticmethod
    def forward(ctx, x, r, n):
        xs = (x / r).mul_(n)  # x/r first: exactly ±1 at x = ±r (absmax scaling puts a value there)
        c = xs.clamp(-n, n)
        mask = c == xs  # inside the range (NaN: outside)
        ctx.save_for_backward(xs, r, mask)
        ctx.n = n
        return c.round_()

    @staticmethod
    def backward(ctx, g):
        xs, r, mask = ctx.saved_tensors
        gx = torch.where(mask, g, 0.0).mul_(ctx.n / r)  # d/dx inside the range
        grad_r = None
        if ctx.needs_input_grad[1]:  # -Σ g·mask·xs / r = -Σ gx·xs / n
            if r.dim() == 0:
                grad_r = torch.dot(gx.reshape(-1), xs.reshape(-1)).neg_().div_(ctx.n)
            else:
                grad_r = _sum_to(gx * xs, r.shape).neg_().div_(ctx.n)
        return gx if ctx.needs_input_grad[0] else None, grad_r, None


class ReadoutSTE(torch.autograd.Function):
    """Per-tile outputs y_k (N, out) in ADC code units, one per row tile -> output noise
    -> ADC (clamp to ±n, round; STE) -> × gain_k (1|N, out) -> sum over row tiles ->
    + bias, as one autograd node. Taking the tiles as separate tensors lets each be one
    plain GEMM on its slice of the inputs (a batched GEMM on strided tiles is ~3× slower
    on CPU)."""

    @staticmethod
    def forward(ctx, gain, bias, noise, noise_std, n, *ys):
        masks, qs, out = [], [], None
        for k, y in enumerate(ys):
            t = y if noise is None else torch.add(y, noise[k], alpha=noise_std)
            c = t.clamp(-n, n)
            masks.append(c == t)
            q = c.round_()
            qs.append(q)
            if out is None:
                out = torch.addcmul(bias, q, gain[k]) if bias is not None else q * gain[k]
            else:
                out.addcmul_(q, gain[k])
        ctx.save_for_backward(gain, *masks, *qs)
        ctx.n_tiles = len(ys)
        return out

    @staticmethod
    def backward(ctx, g):
        gain, *rest = ctx.saved_tensors
        k = ctx.n_tiles
        masks, qs = rest[:k], rest[k:]
        grad_ys = [torch.where(masks[i], g * gain[i], 0.0) if ctx.needs_input_grad[5 + i] else None
                   for i in range(k)]
        grad_gain = None
        if ctx.needs_input_grad[0]:
            grad_gain = torch.stack([_sum_to(g * q, gain.shape[1:]) for q in qs])
        grad_bias = g.sum(0) if ctx.needs_input_grad[1] else None
        return (grad_gain, grad_bias, None, None, None, *grad_ys)
