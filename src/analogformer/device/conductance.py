"""Weight <-> differential-pair conductance mapping (SPEC §2).

`W ∝ G+ − G−`: with scale s = g_max / w_max (per tile or per column), G+ = clamp(W·s, 0,
g_max) and G− = clamp(−W·s, 0, g_max). Zero weights are G+ = G− = 0. Weights beyond the
scale are clipped to [−w_max, w_max] by the clamp.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def group_amax(x: torch.Tensor, col_sizes: Sequence[int]) -> torch.Tensor:
    """Max over each column group of the last dim, broadcast back to every column.

    `x` is (..., out); returns a tensor of the same shape where each column holds the max
    of its tile's column group.
    """
    if len(col_sizes) == 1:
        return x.amax(dim=-1, keepdim=True).expand_as(x)
    parts = [p.amax(dim=-1, keepdim=True).expand_as(p) for p in torch.split(x, list(col_sizes), dim=-1)]
    return torch.cat(parts, dim=-1)


def group_mean(x: torch.Tensor, col_sizes: Sequence[int]) -> torch.Tensor:
    """Mean over each column group of the last dim, broadcast back to every column."""
    if len(col_sizes) == 1:
        return x.mean(dim=-1, keepdim=True).expand_as(x)
    parts = [p.mean(dim=-1, keepdim=True).expand_as(p) for p in torch.split(x, list(col_sizes), dim=-1)]
    return torch.cat(parts, dim=-1)


def weight_scales(w_tiled: torch.Tensor, col_sizes: Sequence[int], per_column: bool,
                  eps: float = 1e-12) -> torch.Tensor:
    """w_max per (row tile, output column): (K, R, out) -> (K, out).

    Per column: max |W| over the tile's rows for each column. Per tile: the max over the
    whole tile, broadcast to its columns. Never zero (an all-zero tile gets `eps`).
    """
    col_max = w_tiled.detach().abs().amax(dim=1)
    scale = col_max if per_column else group_amax(col_max, col_sizes)
    return scale.clamp_min(eps)


def weight_to_conductances(w_norm: torch.Tensor, g_max_us: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalized weights (W / w_max) -> (G+, G−) in µS, each clamped to [0, g_max]."""
    g = w_norm * g_max_us
    return g.clamp(0.0, g_max_us), (-g).clamp(0.0, g_max_us)


def conductances_to_weight(g_plus: torch.Tensor, g_minus: torch.Tensor, g_max_us: float) -> torch.Tensor:
    """(G+ − G−) / g_max: the normalized weight a differential pair represents."""
    return (g_plus - g_minus) / g_max_us
