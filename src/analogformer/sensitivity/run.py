"""`sensitivity()`: the headline metric when only one layer is noisy, per layer and mode, and
`mixed_mapping()`: the metric and the tile count when the k most sensitive matrices stay digital.

Records (one `RecordLog`, resumable like a study's): "digital" (the model as given), then per
mode and layer the condition "<mode>:<layer>" over `repeats` device instances. Seeds come from
values (`seeding.derive_seed`): a white-noise draw from (seed, mode, std, repeat, layer name);
"tiles" runs the study's own sweep (`study.sweep.run_time_sweep`) on a model where only that
layer is analog, so its devices are those instance r of the study programs for that layer.
Mixed mapping: condition "mixed:k=<k>", the whole tile model minus the k matrices, at the same
time and instances.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..config import AnalogConfig, from_dict, to_dict
from ..hardware.mapping import MappingConfig, map_matrices, matrix_shapes
from ..logs import get_logger
from ..nn.convert import analog_layers, select_modules
from ..seeding import derive_seed
from ..study.records import RecordLog
from ..study.sweep import Condition, SweepConfig, run_time_sweep
from .layers import Layer, find_layers, weight_of, weight_stats
from .modes import MODES, check_modes

logger = get_logger(__name__)
Stats = Tuple[float, float, int]


def _stats(values) -> Stats:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0, len(v)


@dataclass
class Sensitivity:
    """Layers, modes and records of one analysis; statistics, rankings and correlations."""

    layers: List[Layer]
    modes: List[str]
    records: List[dict]
    repeats: int
    std: float
    t_seconds: float
    higher_is_better: bool = True
    weights: Dict[str, Dict[str, float]] = field(default_factory=dict)
    mixed: List[dict] = field(default_factory=list)

    def values(self, condition: str) -> List[float]:
        return [r["headline"] for r in self.records if r["condition"] == condition and r["repeat"] < self.repeats]

    @property
    def digital(self) -> float:
        v = self.values("digital")
        return v[0] if v else math.nan

    def stats(self, mode: str, layer: str) -> Stats:
        """(mean, SEM, n) of the headline with only `layer` noisy in `mode`."""
        return _stats(self.values(f"{mode}:{layer}"))

    def drop(self, mode: str, layer: str) -> Stats:
        """(mean, SEM, n) of what the noise costs: digital − noisy (noisy − digital where lower
        is better), > 0 = it hurts."""
        mean, sem, n = self.stats(mode, layer)
        return (self.digital - mean if self.higher_is_better else mean - self.digital), sem, n

    def measured(self, mode: str) -> List[Layer]:
        return [l for l in self.layers if self.stats(mode, l.name)[2] > 0]

    def ranking(self, mode: str, kinds: Sequence[str] = ("analog", "digital", "embedding")) -> List[str]:
        """Layers measured in `mode`, most sensitive (largest drop) first."""
        ls = [l for l in self.measured(mode) if l.kind in kinds]
        return [l.name for l in sorted(ls, key=lambda l: -self.drop(mode, l.name)[0])]

    def correlations(self, mode: str) -> Dict[str, Tuple[float, float, int]]:
        """Spearman rank correlation (rho, p, n) of each weight statistic with the drop in `mode`."""
        from scipy.stats import spearmanr

        ls = [l for l in self.measured(mode) if l.name in self.weights]
        out = {}
        for stat in ("std", "kurtosis", "max_over_rms"):
            x = [self.weights[l.name][stat] for l in ls]
            y = [self.drop(mode, l.name)[0] for l in ls]
            if len(ls) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
                out[stat] = (math.nan, math.nan, len(ls))
                continue
            res = spearmanr(x, y)
            out[stat] = (float(res.statistic), float(res.pvalue), len(ls))
        return out


def _only(cfg: AnalogConfig, name: str) -> AnalogConfig:
    """`cfg` with `name` its only analog matrix (whatever the config excluded, e.g. the head)."""
    d = to_dict(cfg)
    d["include"], d["exclude"] = [f"^{re.escape(name)}$"], []
    return from_dict(AnalogConfig, d)


def exclude_config(cfg: AnalogConfig, names: Sequence[str]) -> AnalogConfig:
    """`cfg` with `names` kept digital: one anchored regex each appended to `exclude`."""
    d = to_dict(cfg)
    d["exclude"] = list(cfg.exclude) + [f"^{re.escape(n)}$" for n in names]
    return from_dict(AnalogConfig, d)


def tiles_of(model: nn.Module, cfg: AnalogConfig) -> Tuple[int, int]:
    """(tiles, analog weights) of the matrices `cfg` puts on tiles (`hardware.mapping`)."""
    mcfg = MappingConfig.from_tile_config(cfg.tile, exclude=cfg.exclude)
    chosen = set(select_modules(model, cfg))
    tm = map_matrices([s for s in matrix_shapes(model, mcfg) if s.name in chosen], mcfg)
    return tm.tiles, tm.weights


def _metrics_fns(evaluate, headline):
    def metrics_of(model):
        v = evaluate(model)
        if isinstance(v, Mapping):
            if headline is None and "headline" not in v:
                raise ValueError("sensitivity: evaluate returned a dict of metrics; pass headline=fn(metrics)")
            return dict(v)
        return {"headline": float(v)}
    return metrics_of, headline or (lambda m: m["headline"])


def _write(log: RecordLog, task: str, cond: str, t, repeat: int, metrics, pick) -> None:
    log.write({"task": task, "condition": cond, "t_seconds": t, "repeat": repeat, "metrics": metrics,
               "headline": pick(metrics)})


def sensitivity(model: nn.Module, analog_cfg: AnalogConfig, evaluate: Callable, log: RecordLog, *,
                modes: Sequence[str] = ("weights", "tiles"), std: float = 0.1, t_seconds: float = 2592000.0,
                repeats: int = 5, seed: int = 0, calib_batches: Sequence = (), digital_layers: bool = True,
                select: Optional[str] = None, headline=None, higher_is_better: bool = True,
                calibration_percentile: Optional[float] = 99.0, task: str = "sensitivity",
                progress: bool = False) -> Sensitivity:
    """Measure `evaluate` on the digital `model` with one layer at a time noisy, per mode of
    `modes` (`MODES`), over `repeats` instances; records go to `log` (those it holds are reused)."""
    modes = check_modes(modes)
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"sensitivity: std must be a number > 0, got {std!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"sensitivity: repeats must be a whole number >= 1, got {repeats!r}")
    if analog_layers(model):
        raise ValueError("sensitivity: the model is already analogized; pass the digital model")
    model.eval()
    layers = find_layers(model, analog_cfg, digital_layers, select)
    metrics_of, pick = _metrics_fns(evaluate, headline)
    if not log.has((task, "digital", None, 0)):
        with torch.no_grad():
            _write(log, task, "digital", None, 0, metrics_of(model), pick)
    modules = dict(model.named_modules())
    sweep = SweepConfig(times_seconds=(float(t_seconds),), repeats=repeats, seed=seed,
                        calibration_percentile=calibration_percentile)
    for mode in modes:
        entry = MODES[mode]
        for i, layer in enumerate(layers, 1):
            cond = f"{mode}:{layer.name}"
            if entry.perturb is None:  # tiles: the study's sweep, this layer alone analog
                if not layer.matrix or all(log.has((task, cond, float(t_seconds), r)) for r in range(repeats)):
                    continue
                logger.info(f"sensitivity {mode} {i}/{len(layers)}: {layer.name}")
                only = _only(analog_cfg, layer.name)
                c = Condition(cond, compensation=only.compensation.enabled, gamma=only.pcm.gamma)
                run_time_sweep({"digital": model}, task, [c], metrics_of, pick, only, sweep, log,
                               calib_batches=calib_batches, progress=progress)
                continue
            todo = [r for r in range(repeats) if not log.has((task, cond, None, r))]
            if todo:
                logger.info(f"sensitivity {mode} {i}/{len(layers)}: {layer.name}")
            for r in todo:
                g = torch.Generator().manual_seed(derive_seed(seed, "sensitivity", mode, float(std), r, layer.name))
                with torch.no_grad(), entry.perturb(modules[layer.name], float(std), g):
                    metrics = metrics_of(model)
                _write(log, task, cond, None, r, metrics, pick)
    stats = {l.name: weight_stats(weight_of(modules[l.name])) for l in layers}
    records = [r for r in log.records if r["task"] == task]
    return Sensitivity(layers, modes, records, repeats, float(std), float(t_seconds), higher_is_better, stats)


def mixed_mapping(model: nn.Module, analog_cfg: AnalogConfig, evaluate: Callable, log: RecordLog,
                  ranking: Sequence[str], ks: Sequence[int], *, t_seconds: float = 2592000.0, repeats: int = 5,
                  seed: int = 0, calib_batches: Sequence = (), headline=None,
                  calibration_percentile: Optional[float] = 99.0, task: str = "sensitivity",
                  progress: bool = False) -> List[dict]:
    """Per k of `ks`: keep the first k matrices of `ranking` (analog matrices of `analog_cfg`,
    most sensitive first) digital, evaluate the rest on tiles at `t_seconds` over `repeats`
    instances; returns rows {k, excluded, exclude (regexes), tiles, weights, tiles_saved,
    headline (mean, SEM, n)}."""
    analog = set(select_modules(model, analog_cfg))
    ranking = [n for n in ranking if n in analog]
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k > len(ranking)]
    if bad or not ks:
        raise ValueError(f"mixed mapping: k must be whole numbers in [0, {len(ranking)}] (the analog matrices "
                         f"ranked), got {list(ks)}")
    metrics_of, pick = _metrics_fns(evaluate, headline)
    sweep = SweepConfig(times_seconds=(float(t_seconds),), repeats=repeats, seed=seed,
                        calibration_percentile=calibration_percentile)
    full_tiles, _ = tiles_of(model, analog_cfg)
    rows = []
    for k in sorted(set(ks)):
        cfg_k = exclude_config(analog_cfg, ranking[:k])
        cond = f"mixed:k={k}"
        if k < len(ranking) and not all(log.has((task, cond, float(t_seconds), r)) for r in range(repeats)):
            logger.info(f"mixed mapping: k = {k} matrices digital")
            c = Condition(cond, compensation=cfg_k.compensation.enabled, gamma=cfg_k.pcm.gamma)
            run_time_sweep({"digital": model}, task, [c], metrics_of, pick, cfg_k, sweep, log,
                           calib_batches=calib_batches, progress=progress)
        tiles, weights = tiles_of(model, cfg_k) if k < len(ranking) else (0, 0)
        vals = [r["headline"] for r in log.records if r["task"] == task and r["condition"] == cond
                and r["t_seconds"] == float(t_seconds) and r["repeat"] < repeats]
        if k == len(ranking):  # everything digital: the digital model
            vals = [r["headline"] for r in log.records if r["task"] == task and r["condition"] == "digital"]
        rows.append({"k": k, "excluded": ranking[:k], "exclude": list(cfg_k.exclude[len(analog_cfg.exclude):]),
                     "tiles": tiles, "weights": weights, "tiles_saved": full_tiles - tiles, "headline": _stats(vals)})
    return rows
