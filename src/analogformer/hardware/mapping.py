"""Placing analog matrices on 512×512 tiles: tiles per matrix / block, chips, freed tiles.

A matrix W (out × in) sits on the crossbar with rows = inputs (`in`) and columns = outputs
(`out`). Each dimension is cut with `tile.split_sizes` ("balanced" = aihwkit, "fill_first" =
seed 000's 512-first), a *piece* is one (row-part × column-part) and, by default, one piece
occupies one tile. Seed 000 (ch. 2 §5) maps ALBERT-base with rows balanced, columns 512-first,
Q/K/V fused into one 768×2304 in-projection and the out-projection in 256-column half tiles
(`MappingConfig.seed000_albert()`): 10 + 6 + 12 + 12 = 40 pieces, which with `pack_shared=True`
(pieces narrower than a tile share it side by side, used in separate MVMs; first-fit-decreasing
on widths) fill 33 of ARES's 34 tiles — "only two half tiles free". Table 3.1's freed tiles
count pieces (no sharing). Shared modules (ALBERT's one layer used 12 times) are counted once.
Only nn.Linear and HF Conv1D are analog; heads, poolers and embedding projections are excluded.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..nn.targets import BLOCKS, DEFAULT_EXCLUDE, analog_matrices, ffn_groups, linear_weight
from ..nn.tile import split_sizes

POLICIES = ("balanced", "fill_first")
BLOCK_ORDER = BLOCKS + ("other",)


@dataclass(frozen=True)
class ChipPreset:
    name: str
    tiles: int
    tile_rows: int = 512
    tile_cols: int = 512

    @property
    def capacity(self) -> int:
        """Weights per chip (ARES: 34 × 512 × 512 = 8,912,896)."""
        return self.tiles * self.tile_rows * self.tile_cols


ARES = ChipPreset("ARES", 34, 512, 512)


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{cls}.{name}: {msg}")


@dataclass
class BlockPlan:
    """Per-block override: largest piece along rows / columns and split policies.
    None = the MappingConfig's value (e.g. seed 000's out-projection: max_cols=256)."""
    max_rows: Optional[int] = None
    max_cols: Optional[int] = None
    row_policy: Optional[str] = None
    col_policy: Optional[str] = None

    def __post_init__(self):
        for n in ("max_rows", "max_cols"):
            v = getattr(self, n)
            _check(v is None or (isinstance(v, int) and v > 0), "BlockPlan", n,
                   f"must be a positive int or None, got {v!r}")
        for n in ("row_policy", "col_policy"):
            v = getattr(self, n)
            _check(v is None or v in POLICIES, "BlockPlan", n,
                   f"must be one of {list(POLICIES)} or None, got {v!r}")


@dataclass
class MappingConfig:
    """How the analog matrices of a model are placed on tiles, and on which chip."""
    tile_rows: int = 512
    """Crossbar rows of a tile (matrix inputs)."""
    tile_cols: int = 512
    """Crossbar columns of a tile (matrix outputs)."""
    row_policy: str = "balanced"
    """How the inputs are cut: "balanced" (aihwkit) or "fill_first" (512-first)."""
    col_policy: str = "balanced"
    """How the outputs are cut: "balanced" or "fill_first"."""
    block_plans: Dict[str, BlockPlan] = field(default_factory=dict)
    """Per-block overrides (largest piece, policies), e.g. {"out_proj": BlockPlan(max_cols=256)}."""
    fuse_qkv: bool = False
    """Q, K and V of a layer as one fused in-projection matrix (same inputs)."""
    pack_shared: bool = False
    """Pieces narrower than a tile share it side by side (first-fit-decreasing on widths)."""
    chip: ChipPreset = ARES
    """The chip the tiles are counted against (ARES: 34 tiles of 512×512)."""
    exclude: Tuple[str, ...] = DEFAULT_EXCLUDE
    """Regexes on module names that stay digital (heads, poolers, embedding projections)."""
    live_only: bool = False
    """Count only rows / columns with a non-zero weight (masked models; needs real weights)."""

    def __post_init__(self):
        for n in ("tile_rows", "tile_cols"):
            v = getattr(self, n)
            _check(isinstance(v, int) and v > 0, "MappingConfig", n, f"must be a positive int, got {v!r}")
        for n in ("row_policy", "col_policy"):
            _check(getattr(self, n) in POLICIES, "MappingConfig", n,
                   f"must be one of {list(POLICIES)}, got {getattr(self, n)!r}")
        bad = [b for b in self.block_plans if b not in BLOCK_ORDER]
        _check(not bad, "MappingConfig", "block_plans", f"unknown blocks {bad}; allowed {list(BLOCK_ORDER)}")
        for b, p in self.block_plans.items():
            _check(isinstance(p, BlockPlan), "MappingConfig", "block_plans", f"[{b!r}] must be a BlockPlan")
            for lim, tile in ((p.max_rows, self.tile_rows), (p.max_cols, self.tile_cols)):
                _check(lim is None or lim <= tile, "MappingConfig", "block_plans",
                       f"[{b!r}] piece limit {lim} exceeds the tile ({tile})")
        self.exclude = tuple(self.exclude)

    @classmethod
    def from_tile_config(cls, tc, **kw) -> "MappingConfig":
        """Tile size and split policy (both dimensions) from an `analogformer.TileConfig`."""
        return cls(tile_rows=tc.rows, tile_cols=tc.cols, row_policy=tc.split_policy,
                   col_policy=tc.split_policy, **kw)

    @classmethod
    def seed000_albert(cls, **kw) -> "MappingConfig":
        """Seed 000's ALBERT-base placement (ch. 2 §5, Fig. 2.6 / 3.5)."""
        kw.setdefault("block_plans", {"out_proj": BlockPlan(max_cols=256)})
        kw.setdefault("pack_shared", True)
        return cls(row_policy="balanced", col_policy="fill_first", fuse_qkv=True, **kw)

    def splits(self, block: str, rows: int, cols: int) -> Tuple[List[int], List[int]]:
        p = self.block_plans.get(block, BlockPlan())
        r = split_sizes(rows, p.max_rows or self.tile_rows, p.row_policy or self.row_policy)
        c = split_sizes(cols, p.max_cols or self.tile_cols, p.col_policy or self.col_policy)
        return r, c


@dataclass(frozen=True)
class MatrixShape:
    name: str
    block: str           # one of BLOCK_ORDER
    rows: int            # inputs
    cols: int            # outputs
    members: Tuple[str, ...] = ()  # module names (several when Q/K/V are fused)

    @property
    def weights(self) -> int:
        return self.rows * self.cols


def _model_from(model_or_config) -> nn.Module:
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    from transformers import AutoModel, PretrainedConfig
    if not isinstance(model_or_config, PretrainedConfig):
        raise TypeError("mapping: pass an nn.Module or a transformers PretrainedConfig, got "
                        f"{type(model_or_config).__name__}")
    with torch.device("meta"):
        return AutoModel.from_config(model_or_config)


def matrix_shapes(model_or_config, cfg: Optional[MappingConfig] = None) -> List[MatrixShape]:
    """The analog matrices of a model (or of an HF config, built on the meta device)."""
    cfg = cfg or MappingConfig()
    model = _model_from(model_or_config)
    live: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    out: List[MatrixShape] = []
    for t in analog_matrices(model, cfg.exclude):
        w = linear_weight(t.module)
        if cfg.live_only:
            if w.is_meta:
                raise ValueError("MappingConfig.live_only needs real weights, not a config")
            nz = w.detach() != 0
            live[t.name] = (nz.any(0), nz.any(1))
            rows, cols = int(live[t.name][0].sum()), int(live[t.name][1].sum())
        else:
            rows, cols = w.shape[1], w.shape[0]
        out.append(MatrixShape(t.name, t.block or "other", rows, cols, (t.name,)))
    if not cfg.fuse_qkv:
        return out
    fused: List[MatrixShape] = []
    groups: Dict[str, List[MatrixShape]] = {}
    for m in out:
        if m.block == "in_proj":
            groups.setdefault(m.name.rsplit(".", 1)[0], []).append(m)
    done = set()
    for m in out:
        parent = m.name.rsplit(".", 1)[0]
        g = groups.get(parent) if m.block == "in_proj" else None
        if not g or len(g) < 2:
            fused.append(m)
            continue
        if parent in done:
            continue
        done.add(parent)
        rows = (int(torch.stack([live[x.name][0] for x in g]).any(0).sum()) if cfg.live_only
                else g[0].rows)
        if not cfg.live_only and len({x.rows for x in g}) > 1:
            raise ValueError(f"fuse_qkv: {parent} projections have different inputs")
        fused.append(MatrixShape(parent + ".qkv", "in_proj", rows, sum(x.cols for x in g),
                                 tuple(x.name for x in g)))
    return fused


def shrink(shapes: Sequence[MatrixShape], rows_removed: Dict[str, int],
           cols_removed: Optional[Dict[str, int]] = None,
           coupled_ffn: bool = True) -> List[MatrixShape]:
    """What-if: remove crossbar rows / columns per block (seed 000 Table 3.1). With
    `coupled_ffn`, FC2 rows removed also remove the same FC1 columns and vice versa."""
    cols_removed = dict(cols_removed or {})
    for b in list(rows_removed) + list(cols_removed):
        _check(b in BLOCK_ORDER, "shrink", "block", f"unknown {b!r}; allowed {list(BLOCK_ORDER)}")
    dr = {m.name: rows_removed.get(m.block, 0) for m in shapes}
    dc = {m.name: cols_removed.get(m.block, 0) for m in shapes}
    if coupled_ffn:
        by_member = {mem: m.name for m in shapes for mem in m.members}
        for g in ffn_groups(by_member):
            f2 = by_member[g.fc2]
            for f1 in (by_member[n] for n in g.fc1):
                n = max(dr[f2], dc[f1])
                dr[f2], dc[f1] = n, n
    out = []
    for m in shapes:
        rows, cols = m.rows - dr[m.name], m.cols - dc[m.name]
        if rows < 0 or cols < 0:
            raise ValueError(f"shrink: {m.name} has {m.rows}×{m.cols}, cannot remove "
                             f"{dr[m.name]} rows / {dc[m.name]} columns")
        out.append(replace(m, rows=rows, cols=cols))
    return out


@dataclass
class Placement:
    matrix: MatrixShape
    row_sizes: List[int]
    col_sizes: List[int]

    @property
    def pieces(self) -> List[Tuple[int, int]]:
        return [(r, c) for r in self.row_sizes for c in self.col_sizes]

    @property
    def tiles(self) -> int:
        return len(self.pieces)


@dataclass
class TileMap:
    """Placement of every analog matrix; `tiles` counts pieces (one per tile), and
    `tiles_used` is `packed_tiles` when `config.pack_shared` else `tiles`."""
    placements: List[Placement]
    config: MappingConfig

    @property
    def tiles(self) -> int:
        return sum(p.tiles for p in self.placements)

    @property
    def weights(self) -> int:
        return sum(p.matrix.weights for p in self.placements)

    def tile_contents(self) -> List[List[Tuple[str, str, int, int]]]:
        """Tiles as lists of pieces (matrix name, block, rows, cols), in block order."""
        pieces = [(p.matrix.name, p.matrix.block, r, c)
                  for p in sorted(self.placements, key=lambda p: BLOCK_ORDER.index(p.matrix.block))
                  for (r, c) in p.pieces if r and c]
        if not self.config.pack_shared:
            return [[pc] for pc in pieces]
        tiles: List[List] = []
        free: List[int] = []
        for pc in sorted(pieces, key=lambda pc: -pc[3]):  # first fit decreasing on width
            for k, f in enumerate(free):
                if pc[3] <= f:
                    tiles[k].append(pc)
                    free[k] -= pc[3]
                    break
            else:
                tiles.append([pc])
                free.append(self.config.tile_cols - pc[3])
        return tiles

    @property
    def packed_tiles(self) -> int:
        return len(replace(self, config=replace(self.config, pack_shared=True)).tile_contents())

    @property
    def tiles_used(self) -> int:
        return len(self.tile_contents())

    @property
    def occupancy(self) -> float:
        return self.weights / max(1, self.tiles_used * self.config.tile_rows * self.config.tile_cols)

    @property
    def chips_needed(self) -> int:
        return math.ceil(self.tiles_used / self.config.chip.tiles)

    def weights_per_chip(self) -> List[int]:
        """Weights stored on each chip, tiles assigned to chips in order."""
        t = self.tile_contents()
        n = self.config.chip.tiles
        return [sum(r * c for tile in t[i:i + n] for (_, _, r, c) in tile) for i in range(0, len(t), n)]

    def per_block(self) -> Dict[str, Dict[str, float]]:
        out: Dict[str, Dict[str, float]] = {}
        for p in self.placements:
            d = out.setdefault(p.matrix.block, {"matrices": 0, "tiles": 0, "weights": 0})
            d["matrices"] += 1
            d["tiles"] += p.tiles
            d["weights"] += p.matrix.weights
        area = self.config.tile_rows * self.config.tile_cols
        for d in out.values():
            d["occupancy"] = d["weights"] / max(1, d["tiles"] * area)
        return {b: out[b] for b in BLOCK_ORDER if b in out}

    def rows(self) -> List[Dict[str, object]]:
        area = self.config.tile_rows * self.config.tile_cols
        return [{"matrix": p.matrix.name, "block": p.matrix.block, "rows": p.matrix.rows,
                 "cols": p.matrix.cols, "row_split": "+".join(map(str, p.row_sizes)),
                 "col_split": "+".join(map(str, p.col_sizes)), "tiles": p.tiles,
                 "weights": p.matrix.weights,
                 "occupancy": round(p.matrix.weights / max(1, p.tiles * area), 4)}
                for p in self.placements]

    def to_markdown(self) -> str:
        r = self.rows()
        md = _markdown(r) if r else "(no analog matrices)\n"
        chip = self.config.chip
        return md + (f"\nTotal: {self.tiles} tiles ({self.tiles_used} used"
                     f"{', shared tiles packed' if self.config.pack_shared else ''}), "
                     f"{self.weights:,} weights, occupancy {self.occupancy:.1%}; "
                     f"{self.chips_needed} × {chip.name} ({chip.tiles} tiles, "
                     f"{chip.capacity:,} weights); weights per chip {self.weights_per_chip()}\n")

    def to_csv(self, path: str) -> str:
        return _write_csv(path, self.rows())

    def block_markdown(self) -> str:
        """Per-block summary (matrices, tiles, weights, occupancy) plus the chip total."""
        rows = [{"block": b, "matrices": int(d["matrices"]), "tiles": int(d["tiles"]),
                 "weights": f"{int(d['weights']):,}", "occupancy": f"{d['occupancy']:.1%}"}
                for b, d in self.per_block().items()]
        md = _markdown(rows) if rows else "(no analog matrices)\n"
        chip = self.config.chip
        return md + (f"\nTotal: {self.tiles_used} tiles of {self.config.tile_rows}×{self.config.tile_cols}, "
                     f"{self.weights:,} weights, occupancy {self.occupancy:.1%}; "
                     f"{self.chips_needed} × {chip.name} ({chip.tiles} tiles each)\n")


def map_matrices(shapes: Sequence[MatrixShape], cfg: Optional[MappingConfig] = None) -> TileMap:
    cfg = cfg or MappingConfig()
    places = []
    for m in shapes:
        if m.rows == 0 or m.cols == 0:
            places.append(Placement(m, [], []))
        else:
            places.append(Placement(m, *cfg.splits(m.block, m.rows, m.cols)))
    return TileMap(places, cfg)


def map_model(model_or_config, cfg: Optional[MappingConfig] = None) -> TileMap:
    """Tile map of a model or an HF config (the verb: `map_model(model, MappingConfig())`)."""
    cfg = cfg or MappingConfig()
    return map_matrices(matrix_shapes(model_or_config, cfg), cfg)


def compare(before: TileMap, after: TileMap) -> List[Dict[str, object]]:
    """Per block: tiles and weights before / after, tiles freed, % of all weights removed."""
    b, a = before.per_block(), after.per_block()
    total = before.weights
    rows = []
    for blk in [x for x in BLOCK_ORDER if x in b or x in a]:
        tb, ta = int(b.get(blk, {}).get("tiles", 0)), int(a.get(blk, {}).get("tiles", 0))
        wb, wa = int(b.get(blk, {}).get("weights", 0)), int(a.get(blk, {}).get("weights", 0))
        rows.append({"block": blk, "tiles_before": tb, "tiles_after": ta, "tiles_freed": tb - ta,
                     "weights_before": wb, "weights_after": wa, "weights_removed": wb - wa,
                     "pct_weights_removed": round(100.0 * (wb - wa) / max(1, total), 2)})
    rows.append({"block": "total", "tiles_before": before.tiles, "tiles_after": after.tiles,
                 "tiles_freed": before.tiles - after.tiles, "weights_before": total,
                 "weights_after": after.weights, "weights_removed": total - after.weights,
                 "pct_weights_removed": round(100.0 * (total - after.weights) / max(1, total), 2)})
    return rows


def _markdown(rows: List[Dict[str, object]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k])
                                 for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def comparison_markdown(rows: List[Dict[str, object]]) -> str:
    return _markdown(rows)


def _write_csv(path: str, rows: List[Dict[str, object]]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def comparison_csv(rows: List[Dict[str, object]], path: str) -> str:
    return _write_csv(path, rows)
