"""The pruning criteria: a registry with one entry per criterion.

Every entry names the structures it is defined for, whether it needs calibration
statistics (and the Gram matrix of "obs"), and its scoring function: the importance of
each unit of a weight (out, in) — a larger score means "more important", the lowest
scores are removed. `PruneConfig` validates against the registry, `calibrate` reads what a
criterion needs from it, and `criteria.unit_scores` calls the entry's function.

Adding a criterion is one decorated function::

    @register_criterion("my-norm", structures=("rows", "columns"))
    def my_norm_scores(w, cfg, stats, *, generator, ratio, has_bias):
        return unit_sum(w.abs() ** 3, cfg.structure, cfg.block_shape)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

import torch

from .obs import greedy_row_order

if TYPE_CHECKING:  # only for annotations: mac.py imports prune_config, which imports this
    from .mac import LayerStats
    from .prune_config import PruneConfig

ScoreFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """One registered pruning criterion."""

    name: str
    """The criterion's name in `PruneConfig.criterion` (and in method labels)."""
    structures: Tuple[str, ...]
    """The structures it is defined for (`PruneConfig.structure`)."""
    score: ScoreFn
    """score(w, cfg, stats, *, generator, ratio, has_bias) -> unit scores, `w` in float64."""
    needs_calibration: bool = False
    """Scores come from calibration statistics (`calibrate(model, batches, cfg)`)."""
    needs_gram: bool = False
    """`calibrate` must also accumulate each matrix's input Gram matrix."""
    greedy: bool = False
    """Scores are a greedy removal order: with scope "global" the block's rows are shared
    out by removing the cheapest row over all its matrices, one at a time."""


CRITERION_REGISTRY: Dict[str, Criterion] = {}


def register_criterion(name: str, structures: Tuple[str, ...], needs_calibration: bool = False,
                       needs_gram: bool = False, greedy: bool = False):
    """Decorator: register a scoring function as criterion `name`."""
    def add(fn: ScoreFn) -> ScoreFn:
        if name in CRITERION_REGISTRY:
            raise ValueError(f"criterion {name!r} is registered already")
        CRITERION_REGISTRY[name] = Criterion(name, tuple(structures), fn, needs_calibration,
                                             needs_gram, greedy)
        return fn
    return add


def criterion(name: str) -> Criterion:
    """The registry entry of criterion `name` (an error lists the registered ones)."""
    if name not in CRITERION_REGISTRY:
        raise ValueError(f"unknown criterion {name!r}; registered: {list(CRITERION_REGISTRY)}")
    return CRITERION_REGISTRY[name]


# ---------------------------------------------------------------- unit geometry

def block_sum(t: torch.Tensor, block_shape: Tuple[int, int]) -> torch.Tensor:
    """Sum of t (out, in) over blocks of (rows=inputs, cols=outputs) -> (n_out_b, n_in_b)."""
    br, bc = block_shape
    out, inp = t.shape
    no, ni = math.ceil(out / bc), math.ceil(inp / br)
    padded = t.new_zeros(no * bc, ni * br)
    padded[:out, :inp] = t
    return padded.reshape(no, bc, ni, br).sum(dim=(1, 3))


def expand_blocks(keep: torch.Tensor, block_shape: Tuple[int, int],
                  shape: Tuple[int, int]) -> torch.Tensor:
    """Block scores / keep flags (n_out_b, n_in_b) back to the weight's shape (out, in)."""
    br, bc = block_shape
    full = keep.repeat_interleave(bc, 0).repeat_interleave(br, 1)
    return full[: shape[0], : shape[1]]


def unit_sum(a: torch.Tensor, structure: str, block_shape: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Per-weight values `a` (out, in) summed over each unit of `structure`."""
    if structure == "rows":
        return a.sum(0)
    if structure == "columns":
        return a.sum(1)
    if structure == "blocks":
        return block_sum(a, block_shape)
    return a


def gram_of(st: Optional["LayerStats"], name: Optional[str] = None) -> torch.Tensor:
    """The calibration Gram matrix criterion "obs" needs, or an error naming the fix."""
    if st is None or st.gram is None:
        of = f" of {name!r}" if name else ""
        raise ValueError(f"criterion 'obs' needs the calibration Gram matrix{of}: pass "
                         "stats=calibrate(model, batches, cfg) with cfg.criterion 'obs' "
                         "(or calibrate(..., gram=True))")
    return st.gram


# ---------------------------------------------------------------- the criteria

@register_criterion("mac", ("rows", "columns"), needs_calibration=True)
def mac_scores(w, cfg: "PruneConfig", stats, **_) -> torch.Tensor:
    """Seed 000's MAC contribution Σ Δ of a row (input) or column (output)."""
    return (stats.row_score if cfg.structure == "rows" else stats.col_score).double()


@register_criterion("obs", ("rows",), needs_calibration=True, needs_gram=True, greedy=True)
def obs_scores(w, cfg: "PruneConfig", stats, *, ratio=None, has_bias=True, **_) -> torch.Tensor:
    """Structured Optimal Brain Surgeon: the round(ratio·in) rows the others can best make
    up for by least squares rank lowest, in greedy removal order (obs.py)."""
    count = int(round((cfg.ratio if ratio is None else ratio) * w.shape[1]))
    return greedy_row_order(w, gram_of(stats), min(count, w.shape[1] - 1),
                            cfg.reconstruct_damping, has_bias)


@register_criterion("magnitude", ("irregular", "rows", "columns", "blocks"))
def magnitude_scores(w, cfg: "PruneConfig", stats, **_) -> torch.Tensor:
    """|w| of single weights; for rows / columns / blocks the sum of |w| over the unit (= l1)."""
    return unit_sum(w.abs(), cfg.structure, cfg.block_shape)


@register_criterion("l1", ("rows", "columns", "blocks"))
def l1_scores(w, cfg: "PruneConfig", stats, **_) -> torch.Tensor:
    """L1 norm of a row, column or block."""
    return unit_sum(w.abs(), cfg.structure, cfg.block_shape)


@register_criterion("l2", ("rows", "columns", "blocks"))
def l2_scores(w, cfg: "PruneConfig", stats, **_) -> torch.Tensor:
    """L2 norm of a row, column or block (seed 003)."""
    return unit_sum(w * w, cfg.structure, cfg.block_shape).sqrt()


@register_criterion("activation", ("irregular", "rows", "columns", "blocks"), needs_calibration=True)
def activation_scores(w, cfg: "PruneConfig", stats, **_) -> torch.Tensor:
    """Activation-aware |W_ij|·‖x_j‖₂ (calibration input norms), summed over the unit."""
    return unit_sum(w.abs() * stats.input_norm.double().unsqueeze(0), cfg.structure, cfg.block_shape)


@register_criterion("random", ("irregular", "rows", "columns", "blocks"))
def random_scores(w, cfg: "PruneConfig", stats, *, generator=None, **_) -> torch.Tensor:
    """Uniform random scores from `generator` (default: seeded with cfg.seed): the control
    every criterion must beat."""
    shape = {"rows": w.shape[1:], "columns": w.shape[:1], "irregular": w.shape}.get(cfg.structure)
    if shape is None:
        shape = block_sum(w, cfg.block_shape).shape
    gen = generator or torch.Generator().manual_seed(cfg.seed)
    return torch.rand(tuple(shape), generator=gen, dtype=torch.float64)
