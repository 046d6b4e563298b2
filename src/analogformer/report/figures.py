"""Seed 000 Fig. 3.1 (sorted product-element curves), Fig. 3.2 (Δ heatmap) and the tile
layout of `analogformer.hardware.mapping` (before / after pruning) as PNGs.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display).
The PNG is exactly figsize × dpi pixels.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..hardware.mapping import BLOCK_ORDER, compare
from ..pruning.mac import product_elements

BLOCK_COLORS = {"in_proj": "tab:blue", "out_proj": "tab:orange", "fc1": "tab:green",
                "fc2": "tab:red", "other": "tab:gray"}


def _save(fig: Figure, path: str, dpi: int) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_product_curves(weight: torch.Tensor, frames: torch.Tensor, output_index: int,
                        path: str, frame_index: int = 0, max_curves: int = 200,
                        title: Optional[str] = None, figsize: Tuple[float, float] = (10, 4),
                        dpi: int = 100) -> str:
    """Fig. 3.1: products w_ij·x_jf of output i sorted (positive descending, negative
    ascending) for one frame (left) and for all frames (right, thin lines + mean).

    weight: (out, in) nn.Linear orientation; frames: (F, in) inputs of that matrix.
    """
    w = weight.detach().float().cpu()
    x = frames.detach().float().cpu()
    if not 0 <= output_index < w.shape[0]:
        raise ValueError(f"plot_product_curves: output_index {output_index} outside "
                         f"[0, {w.shape[0]})")
    pos, neg = product_elements(w, x, output_index)
    rank = torch.arange(1, w.shape[1] + 1)
    fig = Figure(figsize=figsize)
    ax0, ax1 = fig.subplots(1, 2)
    mac = float((x[frame_index] * w[output_index]).sum())
    ax0.plot(rank, pos[frame_index], color="tab:red", label="positive products (MAC⁺)")
    ax0.plot(rank, neg[frame_index], color="tab:blue", label="negative products (MAC⁻)")
    ax0.axhline(0, color="k", lw=0.5)
    ax0.set_title(f"frame {frame_index}: y = {mac:.3g}")
    ax1.axhline(0, color="k", lw=0.5)
    for f in range(min(max_curves, x.shape[0])):
        ax1.plot(rank, pos[f], color="tab:red", lw=0.3, alpha=0.3)
        ax1.plot(rank, neg[f], color="tab:blue", lw=0.3, alpha=0.3)
    ax1.plot(rank, pos.mean(0), color="darkred", lw=2, label="mean positive")
    ax1.plot(rank, neg.mean(0), color="navy", lw=2, label="mean negative")
    ax1.set_title(f"all {x.shape[0]} frames")
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        ax.set_xlabel("product element rank (sorted by |w·x|)")
        ax.set_ylabel("product element w_ij·x_jf (output units)")
        ax.legend(fontsize=7)
    fig.suptitle(title or f"Contributions to the MAC of output {output_index}")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_delta_heatmap(delta: torch.Tensor, path: str, title: Optional[str] = None,
                       log_scale: bool = True, figsize: Tuple[float, float] = (8, 7),
                       dpi: int = 100) -> str:
    """Fig. 3.2: Δ (out × in) as a heatmap (dark = low contribution) with the row scores
    Σ_i Δ_ij (crossbar rows = inputs) underneath."""
    d = delta.detach().double().cpu()
    fig = Figure(figsize=figsize)
    gs = fig.add_gridspec(2, 2, height_ratios=(4, 1), width_ratios=(30, 1))
    ax = fig.add_subplot(gs[0, 0])
    cax = fig.add_subplot(gs[0, 1])
    axr = fig.add_subplot(gs[1, 0], sharex=ax)
    pos = d[d > 0]
    norm = None
    if log_scale and pos.numel():
        norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max()))
        d = d.clamp_min(float(pos.min()))
    im = ax.imshow(d.numpy(), aspect="auto", cmap="viridis", norm=norm,
                   interpolation="nearest")
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("Δ_ij = Σ_f |w_ij x_jf / y_if|  (dimensionless)")
    ax.set_ylabel("output i (crossbar column)")
    ax.set_title(title or "MAC contribution of each weight")
    axr.plot(delta.detach().double().cpu().sum(0).numpy(), color="tab:purple", lw=0.8)
    axr.set_xlabel("input j (crossbar row)")
    axr.set_ylabel("row score Σ_i Δ_ij")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_tile_layout(tilemap, path: str, after=None,
                     per_row: int = 10, figsize: Tuple[float, float] = (12, 7),
                     dpi: int = 100) -> str:
    """PNG of the tiles: each tile a square, each piece a rectangle of its rows × columns
    coloured by block (so occupancy is visible), empty slots of the chips dashed. With
    `after`, a second panel shows the pruned map and each block's freed tiles hatched
    (freed = pieces per block, Table 3.1's counting, even when shared tiles are packed)."""
    from matplotlib.patches import Patch, Rectangle


    maps = [("before" if after is not None else "tile layout", tilemap, None)]
    if after is not None:
        freed = {r["block"]: r["tiles_freed"] for r in compare(tilemap, after)}
        maps.append(("after pruning", after, freed))
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    R, C = tilemap.config.tile_rows, tilemap.config.tile_cols
    chip_n = tilemap.config.chip.tiles
    for ax, (title, tm, freed) in zip(axes, maps):
        glyphs: List[Optional[list]] = []
        contents = tm.tile_contents()
        for blk in BLOCK_ORDER:
            glyphs += [t for t in contents if t[0][1] == blk]
            glyphs += [["freed", blk]] * max(0, int((freed or {}).get(blk, 0)))
        used = len(glyphs)
        slots = max(1, math.ceil(used / chip_n)) * chip_n
        glyphs += [None] * (slots - used)
        for k, g in enumerate(glyphs):
            x, y = k % per_row, -(k // per_row)
            ax.add_patch(Rectangle((x + .05, y + .05), .9, .9, fill=False, lw=.6,
                                   ls="--" if g is None else "-", ec="0.6"))
            if g is None:
                continue
            if g[0] == "freed":
                ax.add_patch(Rectangle((x + .05, y + .05), .9, .9, fill=False, hatch="///",
                                       ec=BLOCK_COLORS[g[1]], lw=1))
                continue
            off, used_w = 0.0, 0
            for (_, blk, r, c) in g:
                ax.add_patch(Rectangle((x + .05 + .9 * off, y + .05 + .9 * (1 - r / R)),
                                       .9 * c / C, .9 * r / R, color=BLOCK_COLORS[blk], alpha=.8))
                off += c / C
                used_w += r * c
            ax.text(x + .5, y + .5, f"{100 * used_w / (R * C):.0f}%", ha="center",
                    va="center", fontsize=6)
        ax.set_xlim(0, per_row)
        ax.set_ylim(-math.ceil(len(glyphs) / per_row) + 1, 1)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"{title}: {tm.tiles_used} tiles, {tm.weights:,} weights, "
                     f"{tm.chips_needed} chip(s)", fontsize=9)
    handles = [Patch(color=BLOCK_COLORS[b], label=b) for b in BLOCK_ORDER
               if any(b in m.per_block() for _, m, _ in maps)]
    handles.append(Patch(fill=False, hatch="///", label="freed tile"))
    handles.append(Patch(fill=False, ls="--", ec="0.6", label=f"empty {tilemap.config.chip.name} slot"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"Analog tiles ({R}×{C}); filled area = rows × columns used; % = occupancy")
    return _save(fig, path, dpi)
