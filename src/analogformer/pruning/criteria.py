"""Pruning criteria and structures -> boolean masks.

Scores are computed per *unit* (a crossbar row = input, a crossbar column = output, a
single weight, or a block of `block_shape`); the lowest-scoring units are removed. A
larger score always means "more important". Ranking is per matrix (scope "layer") or over
all matrices of a block together (scope "global", seed 000's cross-layer ranking).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .allocate import keep_obs_aligned, keep_scores_aligned
from .mac import LayerStats, MacStats
from .masks import PruningMasks
from .obs import GreedyRows, remove_globally
from .prune_config import PruneConfig
from .scores import block_sum, criterion, expand_blocks, gram_of
from ..nn.targets import FFNGroup, analog_matrices, ffn_groups, find_targets, linear_weight


def unit_scores(weight: torch.Tensor, cfg: PruneConfig,
                stats: Optional[LayerStats] = None,
                generator: Optional[torch.Generator] = None,
                ratio: Optional[float] = None, has_bias: bool = True) -> torch.Tensor:
    """Importance of each unit of `weight` (out, in) for cfg.criterion / cfg.structure
    (the criterion's registered scoring function, `pruning.scores`).

    Shapes: rows -> (in,), columns -> (out,), irregular -> (out, in),
    blocks -> (ceil(out/cols), ceil(in/rows)) for block_shape = (rows, cols).
    "random" draws from `generator` (default: one seeded with cfg.seed). "obs" is greedy:
    its scores rank the round(`ratio`·in) rows it removes (default `cfg.ratio`) lowest, in
    removal order; `has_bias` says whether the matrix's bias is refit with the rows.
    """
    if cfg.needs_calibration and stats is None:
        raise ValueError(f"criterion {cfg.criterion!r} needs calibration statistics: pass "
                         "stats=calibrate(model, batches, cfg)")
    return criterion(cfg.criterion).score(weight.detach().double(), cfg, stats, generator=generator,
                                          ratio=ratio, has_bias=has_bias)


def _greedy_rows(weight: torch.Tensor, cfg: PruneConfig, stats: Optional[MacStats], name: str,
                 has_bias: bool) -> GreedyRows:
    """A greedy criterion ("obs") with scope "global": the greedy removal state of one matrix,
    its errors scaled to the mean relative squared output error per calibration frame
    (comparable across matrices: every frame's error is relative to its own output, see `mac`)."""
    st = stats[name] if stats is not None and name in stats else None
    return GreedyRows(weight, gram_of(st, name), cfg.reconstruct_damping, has_bias, scale=1.0 / max(st.frames, 1))


def _keep_from_scores(scores: Sequence[torch.Tensor], ratio: float,
                      scope: str) -> List[torch.Tensor]:
    """Boolean keep tensors: the round(ratio·n) lowest scores are removed."""
    if scope == "layer":
        out = []
        for s in scores:
            k = int(round(ratio * s.numel()))
            keep = torch.ones(s.numel(), dtype=torch.bool)
            keep[torch.argsort(s.flatten(), stable=True)[:k]] = False
            out.append(keep.reshape(s.shape))
        return out
    flat = torch.cat([s.flatten() for s in scores])
    k = int(round(ratio * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    out, i = [], 0
    for s in scores:
        out.append(keep[i:i + s.numel()].reshape(s.shape))
        i += s.numel()
    return out


def _propagate_ffn(wm: Dict[str, torch.Tensor], bm: Dict[str, torch.Tensor],
                   groups: Sequence[FFNGroup], shapes: Dict[str, Tuple[int, int]],
                   has_bias: Dict[str, bool]) -> None:
    """Kill an FFN intermediate unit j everywhere once it is dead anywhere.

    j is dead if FC2's input row j is fully masked, or an FC1's output column j is fully
    masked together with its bias entry (act(0) = 0 for GELU/ReLU/SiLU, so the unit
    then contributes nothing). Dead units are masked in FC2 rows, FC1 columns, FC1 bias.
    """
    for g in groups:
        if not any(n in wm for n in (g.fc2,) + g.fc1):
            continue
        for n in (g.fc2,) + g.fc1:
            if n not in wm:
                wm[n] = torch.ones(shapes[n], dtype=torch.bool)
        for n in g.fc1:
            if has_bias[n] and n not in bm:
                bm[n] = torch.ones(shapes[n][0], dtype=torch.bool)
        dead = ~wm[g.fc2].any(0)
        for n in g.fc1:
            col_dead = ~wm[n].any(1)
            if has_bias[n]:
                col_dead &= ~bm[n]
            dead |= col_dead
        wm[g.fc2][:, dead] = False
        for n in g.fc1:
            wm[n][dead, :] = False
            if has_bias[n]:
                bm[n][dead] = False


def removed_units(mask: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    """Which units of cfg.structure a weight mask (out, in) has removed entirely (the shape
    of `unit_scores`)."""
    if cfg.structure == "rows":
        return ~mask.any(0)
    if cfg.structure == "columns":
        return ~mask.any(1)
    if cfg.structure == "blocks":
        return block_sum(mask.double(), cfg.block_shape) == 0
    return ~mask


def masks_from_weights(weights: Dict[str, torch.Tensor], blocks: Dict[str, str],
                       cfg: PruneConfig, stats: Optional[MacStats] = None,
                       groups: Sequence[FFNGroup] = (),
                       shapes: Optional[Dict[str, Tuple[int, int]]] = None,
                       has_bias: Optional[Dict[str, bool]] = None,
                       previous: Optional[PruningMasks] = None) -> PruningMasks:
    """Masks for weights {name: (out, in)} whose blocks are {name: block}.

    `groups` / `shapes` / `has_bias` describe the FFN pairs for coupled pruning (shapes
    and bias flags of every module in a group, targeted or not). `previous` masks (an
    earlier, smaller ratio of gradual pruning) stay removed: their units score lowest, so
    the new masks remove a superset of them.
    """
    shapes = dict(shapes or {n: tuple(w.shape) for n, w in weights.items()})
    has_bias = dict(has_bias or {})
    names = list(weights)
    # LLaMA: gate and up columns are one intermediate unit -> score them jointly.
    joint: Dict[str, Tuple[str, ...]] = {n: (n,) for n in names}
    if cfg.coupled_ffn and cfg.structure == "columns":
        for g in groups:
            fc1 = tuple(n for n in g.fc1 if n in weights)
            if len(fc1) > 1:
                for n in fc1[1:]:
                    joint.pop(n, None)
                joint[fc1[0]] = fc1
    wm: Dict[str, torch.Tensor] = {}
    bm: Dict[str, torch.Tensor] = {}
    by_block: Dict[str, List[Tuple[Tuple[str, ...], torch.Tensor]]] = {}
    gen = torch.Generator().manual_seed(cfg.seed)  # "random": one stream over the matrices in order
    greedy_global = criterion(cfg.criterion).greedy and cfg.scope == "global"
    greedy: Dict[str, List[GreedyRows]] = {}
    for lead, members in joint.items():
        if greedy_global:  # scored below, once the block's matrices have shared out its rows
            w = weights[lead]
            if previous is not None and lead in previous.weight:  # removed rows are zero: first
                w = w * previous.weight[lead]
            greedy.setdefault(blocks[lead], []).append(
                _greedy_rows(w, cfg, stats, lead, has_bias.get(lead, True)))
            s = None
        else:
            s = sum(unit_scores(weights[n], cfg, stats[n] if stats is not None and n in stats
                                else None, generator=gen, ratio=cfg.ratio_for(blocks[lead]),
                                has_bias=has_bias.get(n, True)) for n in members)
            if previous is not None and lead in previous.weight:
                s = s.masked_fill(removed_units(previous.weight[lead], cfg), -math.inf)
        by_block.setdefault(blocks[lead], []).append((members, s))
    for block, units in by_block.items():
        if greedy_global:  # the block's cheapest removals over all its matrices
            states = greedy[block]
            total = int(round(cfg.ratio_for(block) * sum(g.n for g in states)))
            if cfg.tile_multiple:
                least = [int(removed_units(previous.weight[m[0]], cfg).sum())
                         if previous is not None and m[0] in previous.weight else 0
                         for m, _ in units]
                keeps = keep_obs_aligned(states, total, cfg.tile_multiple, least,
                                         f"block {block!r}")
            else:
                remove_globally(states, total)
                keeps = [g.alive.clone() for g in states]
        elif cfg.tile_multiple:  # scope "global" (checked by PruneConfig), whole tiles
            scores = [s for _, s in units]
            total = int(round(cfg.ratio_for(block) * sum(s.numel() for s in scores)))
            keeps = keep_scores_aligned(scores, total, cfg.tile_multiple, f"block {block!r}")
        else:
            keeps = _keep_from_scores([s for _, s in units], cfg.ratio_for(block), cfg.scope)
        for (members, _), keep in zip(units, keeps):
            for n in members:
                shp = tuple(weights[n].shape)
                if cfg.structure == "rows":
                    m = keep.unsqueeze(0).expand(shp).clone()
                elif cfg.structure == "columns":
                    m = keep.unsqueeze(1).expand(shp).clone()
                    if has_bias.get(n) and any(n in g.fc1 for g in groups) and cfg.coupled_ffn:
                        bm[n] = keep.clone()
                elif cfg.structure == "blocks":
                    m = expand_blocks(keep, cfg.block_shape, shp).clone()
                else:
                    m = keep.clone()
                wm[n] = m
    if previous is not None:  # exactly nested even where units were not scored (coupled FC1)
        for n, m in previous.weight.items():
            if n in wm:
                wm[n] &= m
        for n, m in previous.bias.items():
            if n in bm:
                bm[n] &= m
    if cfg.coupled_ffn:
        _propagate_ffn(wm, bm, groups, shapes, has_bias)
    return PruningMasks(wm, bm)


@dataclass
class MaskContext:
    """Everything `masks_from_weights` needs about a model besides the weights."""
    modules: Dict[str, nn.Module]          # the targets
    blocks: Dict[str, str]
    groups: List[FFNGroup]
    shapes: Dict[str, Tuple[int, int]]
    has_bias: Dict[str, bool]

    def weights(self) -> Dict[str, torch.Tensor]:
        return {n: linear_weight(m).detach() for n, m in self.modules.items()}


def mask_context(model: nn.Module, cfg: PruneConfig) -> MaskContext:
    targets = find_targets(model, cfg.blocks, cfg.exclude)
    everything = {t.name: t.module for t in analog_matrices(model)}
    groups = ffn_groups(everything) if cfg.coupled_ffn else []
    names = {n for g in groups for n in (g.fc2,) + g.fc1} | set(targets)
    return MaskContext({n: t.module for n, t in targets.items()},
                       {n: t.block for n, t in targets.items()}, groups,
                       {n: tuple(linear_weight(everything[n]).shape) for n in names},
                       {n: everything[n].bias is not None for n in names})


def compute_masks(model: nn.Module, cfg: PruneConfig, stats: Optional[MacStats] = None,
                  previous: Optional[PruningMasks] = None) -> PruningMasks:
    """Masks for the target blocks of `model` (nothing is modified); units removed by
    `previous` stay removed."""
    ctx = mask_context(model, cfg)
    return masks_from_weights(ctx.weights(), ctx.blocks, cfg, stats, ctx.groups,
                              ctx.shapes, ctx.has_bias, previous)


def prune(model: nn.Module, cfg: PruneConfig, stats: Optional[MacStats] = None,
          previous: Optional[PruningMasks] = None) -> PruningMasks:
    """Compute masks for `model` and apply them (weights zeroed in place)."""
    masks = compute_masks(model, cfg, stats, previous)
    masks.apply(model)
    return masks


def kept_units(model: nn.Module, cfg: PruneConfig, masks: PruningMasks) -> Dict[str, List[int]]:
    """{block: units (rows / columns as cfg.structure) each target matrix keeps, in model
    order} — how a global scope shared out the removals."""
    ctx = mask_context(model, cfg)
    out: Dict[str, List[int]] = {}
    for name, block in ctx.blocks.items():
        n = ctx.shapes[name][1 if cfg.structure == "rows" else 0]
        if name in masks.weight:
            n -= int(removed_units(masks.weight[name], cfg).sum())
        out.setdefault(block, []).append(n)
    return out
