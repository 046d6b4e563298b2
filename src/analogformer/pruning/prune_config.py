"""`PruneConfig`: what to prune, by which criterion, in which structure, how much."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .scores import CRITERION_REGISTRY, criterion as criterion_entry
from ..nn.targets import BLOCKS

CRITERIA = tuple(CRITERION_REGISTRY)  # the registered criteria (`pruning.scores`)
STRUCTURES = ("rows", "columns", "irregular", "blocks")
SCOPES = ("layer", "global")


def _fail(name: str, msg: str) -> None:
    raise ValueError(f"PruneConfig.{name}: {msg}")


def _check_ratio(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0.0 <= v < 1.0:
        _fail(name, f"must be a number in [0, 1), the fraction of units removed; got {v!r}")
    return float(v)


@dataclass
class PruneConfig:
    """Pruning settings (SPEC §4.4–4.5): what to prune, by which criterion, in which
    structure, how much."""

    criterion: str = "mac"
    """How units are scored, one of the registered criteria (`pruning.scores`): "mac" (seed
    000 MAC contribution; calibration statistics), "obs" (structured Optimal Brain Surgeon:
    rows removed greedily by how badly the other rows can make up for them by least squares
    on the calibration frames — the criterion to pair with `reconstruct`; rows only; with
    scope "global" each matrix loses as many rows as the cheapest removals over all matrices
    of the block allot it), "magnitude" (|w|; for rows / columns / blocks the sum of |w|, as
    "l1"), "l1" / "l2" (norm of a row, column or block), "activation" (|W_ij|·‖x_j‖₂ summed
    over the unit; calibration statistics), "random" (uniform random scores drawn from
    `seed`: the control every criterion must beat)."""
    structure: str = "rows"
    """The unit removed: "rows" = crossbar rows = inputs j (columns of the (out, in) weight),
    "columns" = crossbar columns = outputs i, "irregular" = single weights, "blocks" =
    rectangles of `block_shape`. Each criterion allows some of them."""
    ratio: float = 512 / 3072
    """Fraction of units removed in every selected block, in [0, 1)."""
    block_ratios: Optional[Dict[str, float]] = None
    """Per-block ratios overriding `ratio` for the blocks named (e.g. {"fc2": 512/3072} as
    seed 000); every block named must be in `blocks`."""
    blocks: Tuple[str, ...] = ("fc2",)
    """Which transformer blocks are pruned ("in_proj", "out_proj", "fc1", "fc2")."""
    scope: str = "layer"
    """"layer" removes `ratio` of each matrix's units; "global" ranks the units of all
    selected matrices of a block together (seed 000 ranks across layers), so layers lose
    different numbers of units; the block as a whole still loses `ratio`."""
    tile_multiple: Optional[int] = None
    """With scope "global" and structure "rows" / "columns": every matrix keeps a multiple of
    this many units (or all of them) — set it to the tiles' rows (512 on ARES) so the
    removals free whole tiles; the matrices share out the block's removals by the cheapest
    such combination (`pruning.allocate`; criterion "obs": the refit error after each
    matrix's greedy removals, others: the sum of the removed scores). The block removes the
    total of whole multiples nearest `ratio` (a warning says so when that is not exactly
    `ratio`). None = units are shared out one by one."""
    block_shape: Optional[Tuple[int, int]] = None
    """(rows=inputs, cols=outputs) of a unit for structure "blocks", e.g. (512, 512)."""
    coupled_ffn: bool = True
    """Removing FC2 input rows also removes the matching FC1 output columns and bias entries
    (gate and up for LLaMA), and vice versa."""
    exclude: Tuple[str, ...] = ()
    """Extra regexes on module names never pruned (heads are always excluded)."""
    mac_eps: float = 1e-6
    """|y| below this is clamped to it in Δ = |w x / y| (criterion "mac")."""
    admm_rho: Optional[float] = None
    """ADMM penalty weight of `ADMMPruner`; None = no ADMM. In a study YAML ADMM is the
    schedule `pruning.schedule: {kind: admm, rho: ...}` (this key is deprecated there)."""
    admm_interval_steps: int = 10
    """Optimizer steps between the ADMM projections (Z, U updates) of `ADMMPruner`; in a
    study YAML `interval_steps` of the admm schedule."""
    reconstruct: bool = False
    """After pruning, refit the kept rows and the bias of every row-pruned matrix by least
    squares so its outputs match the dense model's on the calibration frames
    (`pruning.reconstruct`, ThiNet-style); structures "rows" / "columns" only."""
    reconstruct_damping: float = 0.01
    """Ridge of that refit toward the masked weights, relative to the mean input energy
    (larger = closer to plain masking); also the damping of criterion "obs"."""
    seed: int = 0
    """Seed of the "random" criterion."""

    def __post_init__(self):
        if self.criterion not in CRITERION_REGISTRY:
            _fail("criterion", f"must be one of {list(CRITERION_REGISTRY)}, got {self.criterion!r}")
        if self.structure not in STRUCTURES:
            _fail("structure", f"must be one of {list(STRUCTURES)}, got {self.structure!r}")
        allowed = criterion_entry(self.criterion).structures
        if self.structure not in allowed:
            _fail("structure", f"criterion {self.criterion!r} supports structures "
                               f"{list(allowed)}, got {self.structure!r}")
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
        """The ratio of `block` (`block_ratios` first, else `ratio`)."""
        if self.block_ratios and block in self.block_ratios:
            return self.block_ratios[block]
        return self.ratio

    @property
    def needs_calibration(self) -> bool:
        """Whether the criterion scores from calibration statistics (the registry says)."""
        return criterion_entry(self.criterion).needs_calibration

    @property
    def needs_gram(self) -> bool:
        """Whether `calibrate` must accumulate the input Gram matrices (criterion "obs")."""
        return criterion_entry(self.criterion).needs_gram
