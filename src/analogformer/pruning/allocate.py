"""Tile-aligned sharing of a block's removals among its matrices (`PruneConfig.tile_multiple`).

A crossbar tile holds a fixed number of rows (512 on ARES). A matrix that keeps 1100 of its
1536 rows still needs three 512-row tiles, so a global allocation that removes rows unevenly
frees fewer tiles than one that removes the same number in whole tiles. Here every matrix
keeps a multiple of `multiple` units (or all of them), and the matrices share out the
block's removals by the cheapest combination (exact dynamic programme over the totals each
prefix of matrices can reach): cost of removing r units from a matrix = its `costs[r]`, the
criterion's cost of its r cheapest removals (the refit error after r greedy OBS steps, or the
sum of the r lowest scores).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    from .obs import GreedyRows

log = logging.getLogger(__name__)


def aligned_options(n: int, multiple: int, least: int = 0) -> List[int]:
    """Removal counts r of a matrix with `n` units that leave a positive multiple of
    `multiple` units (or remove nothing), and remove at least `least` (units an earlier
    pruning stage took)."""
    kept = [n] + [k * multiple for k in range(1, n // multiple + 1) if k * multiple < n]
    return sorted(n - k for k in kept if n - k >= least)


def cost_horizon(n: int, multiple: int, total: int, least: int = 0) -> int:
    """How many removals of a matrix `tile_aligned_counts` may price: its largest option
    that a block total of `total` can use (one tile beyond it, for rounding up)."""
    opts = aligned_options(n, multiple, least)
    if not opts:
        return least
    usable = [r for r in opts if r <= total + multiple]
    return max(usable) if usable else opts[0]


def tile_aligned_counts(costs: Sequence[Sequence[float]], sizes: Sequence[int], multiple: int,
                        total: int, least: Optional[Sequence[int]] = None,
                        what: str = "block") -> List[int]:
    """Units to remove from each matrix: every matrix keeps a multiple of `multiple` units (or
    all of them), the counts add up to the reachable total nearest `total` (ties: the larger),
    and among those, Σ costs[m][r_m] is least. `costs[m][r]` is matrix m's cost of removing
    its r cheapest units, r = 0 … at least its largest option up to that total; `least[m]`
    is a floor (earlier, nested pruning stages)."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple <= 0:
        raise ValueError(f"tile_multiple must be a positive int, got {multiple!r}")
    least = list(least) if least is not None else [0] * len(sizes)
    options = []
    for m, n in enumerate(sizes):
        opts = aligned_options(n, multiple, least[m])
        if not opts:
            raise ValueError(f"tile_multiple {multiple}: matrix {m} of {what} already lost "
                             f"{least[m]} of its {n} units in an earlier stage, which leaves no "
                             f"whole multiple of {multiple} to keep; use the same tile_multiple "
                             "in every stage")
        options.append([r for r in opts if r < len(costs[m])])
        if not options[-1]:
            raise ValueError(f"tile_aligned_counts: costs of matrix {m} stop at "
                             f"{len(costs[m]) - 1} removals, below its first option {opts[0]}")
    # best[s] = (cost, counts) over the matrices seen so far, for a total of s removals
    best: Dict[int, Tuple[float, Tuple[int, ...]]] = {0: (0.0, ())}
    for m, opts in enumerate(options):
        nxt: Dict[int, Tuple[float, Tuple[int, ...]]] = {}
        for s, (c, counts) in best.items():
            for r in opts:
                key, val = s + r, (c + float(costs[m][r]), counts + (r,))
                if key not in nxt or val[0] < nxt[key][0]:
                    nxt[key] = val
        best = nxt
    reach = min(best, key=lambda s: (abs(s - total), -s))
    if reach == 0 and total > 0:
        raise ValueError(f"tile_multiple {multiple}: no matrix of {what} (units: "
                         f"{list(sizes)}) can lose a whole multiple of {multiple} units; use a "
                         "smaller tile_multiple (the tiles' rows) or scope 'global' without it")
    if reach != total:
        log.warning("tile_multiple %d: %s removes %d units instead of %d (the nearest total "
                    "of whole tiles; ratio %.4f instead of %.4f)", multiple, what, reach, total,
                    reach / sum(sizes), total / sum(sizes))
    return list(best[reach][1])


def _keep_prefixes(costs: Sequence[Sequence[float]], orders: Sequence[Sequence[int]],
                   shapes: Sequence[Tuple[int, ...]], multiple: int, total: int,
                   least: Sequence[int], what: str) -> List[torch.Tensor]:
    """Allot whole tiles by `tile_aligned_counts` and keep each matrix's units but the first
    r_m of its removal order (boolean tensors of `shapes`)."""
    sizes = [math.prod(shp) for shp in shapes]
    counts = tile_aligned_counts(costs, sizes, multiple, total, least, what)
    keeps = []
    for order, n, shp, r in zip(orders, sizes, shapes, counts):
        keep = torch.ones(n, dtype=torch.bool)
        keep[order[:r]] = False
        keeps.append(keep.reshape(shp))
    return keeps


def keep_obs_aligned(states: Sequence["GreedyRows"], total: int, multiple: int,
                     least: Sequence[int], what: str = "block") -> List[torch.Tensor]:
    """Criterion "obs": run each matrix's greedy removals as far as an allocation may need
    them, price r removals at the refit error they leave (the sum of the first r step
    errors), allot whole tiles, and keep the rest of each order. Rows an earlier stage
    removed are zero, cost nothing and come first in each order."""
    costs = []
    for g, lo in zip(states, least):
        horizon = cost_horizon(g.n, multiple, total, lo)
        errs = [0.0]
        while len(g.order) < horizon:
            errs.append(errs[-1] + g.remove())
        costs.append(errs)
    return _keep_prefixes(costs, [g.order for g in states], [(g.n,) for g in states],
                          multiple, total, least, what)


def keep_scores_aligned(scores: Sequence[torch.Tensor], total: int, multiple: int,
                        what: str = "block") -> List[torch.Tensor]:
    """Other criteria: r removals of a matrix cost the sum of its r lowest unit scores
    (units of earlier stages score −inf: they cost nothing and must stay removed)."""
    costs, least, orders = [], [], []
    for s in scores:
        flat = s.flatten().double()
        order = torch.argsort(flat, stable=True)
        done = int(torch.isneginf(flat).sum())
        vals = flat[order[:cost_horizon(flat.numel(), multiple, total, done)]]
        costs.append([0.0] + torch.cumsum(vals.masked_fill(torch.isneginf(vals), 0.0), 0).tolist())
        least.append(done)
        orders.append(order)
    return _keep_prefixes(costs, orders, [tuple(s.shape) for s in scores], multiple, total,
                          least, what)
