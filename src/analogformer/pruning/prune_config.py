"""`PruneConfig`: what to prune, by which criterion, in which structure, how much."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..nn.targets import BLOCKS

CRITERIA = ("mac", "obs", "magnitude", "l1", "l2", "activation", "random")
STRUCTURES = ("rows", "columns", "irregular", "blocks")
SCOPES = ("layer", "global")

# criterion -> structures it is defined for
_ALLOWED = {
    "mac": ("rows", "columns"),          # seed 000: row (input) contribution; columns by symmetry
    "obs": ("rows",),                    # least-squares replaceability of a row (obs.py)
    "magnitude": ("irregular", "rows", "columns", "blocks"),  # |w|; structured: sum of |w| (= l1)
    "l1": ("rows", "columns", "blocks"),
    "l2": ("rows", "columns", "blocks"),  # seed 003: row/column L2 norm, whole blocks
    "activation": ("irregular", "rows", "columns", "blocks"),  # |W_ij| * ||x_j||_2
    "random": ("irregular", "rows", "columns", "blocks"),  # control: uniform random scores
}


def _fail(name: str, msg: str) -> None:
    raise ValueError(f"PruneConfig.{name}: {msg}")


def _check_ratio(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0.0 <= v < 1.0:
        _fail(name, f"must be a number in [0, 1), the fraction of units removed; got {v!r}")
    return float(v)


@dataclass
class PruneConfig:
    """Pruning settings (SPEC §4.4–4.5).

    criterion: "mac" (seed 000 MAC contribution, needs calibration statistics),
        "obs" (structured Optimal Brain Surgeon: rows removed greedily by how badly the
        other rows can make up for them by least squares on the calibration frames — the
        criterion to pair with `reconstruct`; rows only; with scope "global" each matrix
        loses as many rows as the cheapest removals over all matrices of the block allot it,
        by the mean relative squared output error per calibration frame of each greedy step),
        "magnitude" (|w|, irregular), "l1" / "l2" (norm of a row, column or block),
        "activation" (|W_ij|·‖x_j‖₂ summed over the unit; needs calibration statistics),
        "random" (uniform random scores drawn from `seed`: the control every criterion must beat).
        For rows / columns / blocks "magnitude" is the sum of |w| over the unit (as "l1").
    structure: "rows" = crossbar rows = inputs j (columns of the (out, in) weight),
        "columns" = crossbar columns = outputs i, "irregular" = single weights,
        "blocks" = rectangles of `block_shape` = (rows=inputs, cols=outputs).
    ratio: fraction of units removed in every selected block; `block_ratios` overrides it
        for the blocks it names (e.g. {"fc2": 512/3072} as seed 000).
    blocks: which transformer blocks are pruned ("in_proj", "out_proj", "fc1", "fc2").
    scope: "layer" removes `ratio` of each matrix's units; "global" ranks the units of all
        selected matrices of a block together (seed 000 ranks across layers), so layers lose
        different numbers of units; the block as a whole still loses `ratio`.
    tile_multiple: with scope "global" and structure "rows" / "columns": every matrix keeps a
        multiple of this many units (or all of them) — set it to the tiles' rows (512 on
        ARES) so the removals free whole tiles; the matrices share out the block's removals
        by the cheapest such combination (`pruning.allocate`; criterion "obs": the refit
        error after each matrix's greedy removals, others: the sum of the removed scores).
        The block removes the total of whole multiples nearest `ratio` (a warning says so
        when that is not exactly `ratio`). None = units are shared out one by one.
    coupled_ffn: removing FC2 input rows also removes the matching FC1 output columns and
        bias entries (gate and up for LLaMA), and vice versa.
    exclude: extra regexes on module names never pruned (heads are always excluded).
    mac_eps: |y| below this is clamped to it in Δ = |w x / y|.
    admm_rho: ADMM penalty weight; None = no ADMM (prune once, then retrain with masks).
    reconstruct: after pruning, refit the kept rows and the bias of every row-pruned matrix
        by least squares so its outputs match the dense model's on the calibration frames
        (`pruning.reconstruct`, ThiNet-style); structures "rows" / "columns" only.
    reconstruct_damping: ridge of that refit toward the masked weights, relative to the
        mean input energy (larger = closer to plain masking).
    admm_interval_steps: optimizer steps between ADMM projections (Z, U updates).
    seed: seed of the "random" criterion.
    """

    criterion: str = "mac"
    structure: str = "rows"
    ratio: float = 512 / 3072
    block_ratios: Optional[Dict[str, float]] = None
    blocks: Tuple[str, ...] = ("fc2",)
    scope: str = "layer"
    tile_multiple: Optional[int] = None
    block_shape: Optional[Tuple[int, int]] = None
    coupled_ffn: bool = True
    exclude: Tuple[str, ...] = ()
    mac_eps: float = 1e-6
    admm_rho: Optional[float] = None
    admm_interval_steps: int = 10
    reconstruct: bool = False
    reconstruct_damping: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            _fail("criterion", f"must be one of {list(CRITERIA)}, got {self.criterion!r}")
        if self.structure not in STRUCTURES:
            _fail("structure", f"must be one of {list(STRUCTURES)}, got {self.structure!r}")
        if self.structure not in _ALLOWED[self.criterion]:
            _fail("structure", f"criterion {self.criterion!r} supports structures "
                               f"{list(_ALLOWED[self.criterion])}, got {self.structure!r}")
        if self.scope not in SCOPES:
            _fail("scope", f"must be one of {list(SCOPES)}, got {self.scope!r}")
        if self.tile_multiple is not None:
            if isinstance(self.tile_multiple, bool) or not isinstance(self.tile_multiple, int) \
                    or self.tile_multiple <= 0:
                _fail("tile_multiple", f"must be a positive int (the tiles' rows, e.g. 512) or "
                                       f"None, got {self.tile_multiple!r}")
            if self.scope != "global":
                _fail("tile_multiple", "aligns a global allocation to whole tiles; with scope "
                                       "'layer' every matrix loses round(ratio·n) units — set "
                                       "scope: global, or pick a ratio that removes whole tiles")
            if self.structure not in ("rows", "columns"):
                _fail("tile_multiple", f"counts whole crossbar rows or columns; structure "
                                       f"{self.structure!r} is not one of them")
        if isinstance(self.blocks, str):
            self.blocks = (self.blocks,)
        self.blocks = tuple(self.blocks)
        if not self.blocks:
            _fail("blocks", f"must name at least one of {list(BLOCKS)}")
        bad = [b for b in self.blocks if b not in BLOCKS]
        if bad:
            _fail("blocks", f"unknown {bad}; allowed {list(BLOCKS)}")
        self.ratio = _check_ratio("ratio", self.ratio)
        if self.block_ratios is not None:
            if not isinstance(self.block_ratios, dict):
                _fail("block_ratios", f"must be a dict block -> ratio, got {self.block_ratios!r}")
            extra = [b for b in self.block_ratios if b not in self.blocks]
            if extra:
                _fail("block_ratios", f"names blocks {extra} that are not in blocks="
                                      f"{list(self.blocks)}; add them to `blocks`")
            self.block_ratios = {b: _check_ratio(f"block_ratios[{b!r}]", r)
                                 for b, r in self.block_ratios.items()}
        if self.structure == "blocks":
            if self.block_shape is None:
                _fail("block_shape", "must be set for structure='blocks', e.g. (512, 512) "
                                     "for tile-sized blocks (rows=inputs, cols=outputs)")
        if self.block_shape is not None:
            bs = tuple(self.block_shape)
            if len(bs) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0
                                   for v in bs):
                _fail("block_shape", f"must be two positive ints (rows, cols), got "
                                     f"{self.block_shape!r}")
            self.block_shape = bs
        self.exclude = tuple(self.exclude)
        if not (isinstance(self.mac_eps, (int, float)) and self.mac_eps > 0):
            _fail("mac_eps", f"must be > 0, got {self.mac_eps!r}")
        if self.admm_rho is not None and not (isinstance(self.admm_rho, (int, float))
                                              and self.admm_rho > 0):
            _fail("admm_rho", f"must be > 0 or None (ADMM off), got {self.admm_rho!r}")
        if isinstance(self.admm_interval_steps, bool) or not isinstance(
                self.admm_interval_steps, int) or self.admm_interval_steps <= 0:
            _fail("admm_interval_steps", f"must be a positive int, got "
                                         f"{self.admm_interval_steps!r}")
        if not isinstance(self.reconstruct, bool):
            _fail("reconstruct", f"must be true or false, got {self.reconstruct!r}")
        if self.reconstruct and self.structure not in ("rows", "columns"):
            _fail("reconstruct", f"least-squares reconstruction refits whole crossbar rows; "
                                 f"structure {self.structure!r} removes single weights or blocks "
                                 "(use structure 'rows' or 'columns', or reconstruct: false)")
        if isinstance(self.reconstruct_damping, bool) or not isinstance(
                self.reconstruct_damping, (int, float)) or not self.reconstruct_damping > 0 \
                or not math.isfinite(self.reconstruct_damping):
            _fail("reconstruct_damping", f"must be a number > 0, got {self.reconstruct_damping!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            _fail("seed", f"must be an int, got {self.seed!r}")

    def ratio_for(self, block: str) -> float:
        if self.block_ratios and block in self.block_ratios:
            return self.block_ratios[block]
        return self.ratio

    @property
    def needs_calibration(self) -> bool:
        return self.criterion in ("mac", "obs", "activation")
