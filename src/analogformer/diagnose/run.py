"""`diagnose()`: the headline metric with each non-ideality alone on, and alone off.

Rows (`effects.build_rows`): "digital" (the model as given), "ideal tiles" (analogized with
every non-ideality off and never programmed: exactly `nn.Linear`, so it must equal
digital), "all on" (the given config), then per non-ideality N the config has on: "only N"
(every other one off) and "all but N" (N off), and for a choice (conductance scale, DAC
input scaling) "all on, <the other choice>".

The programmed rows are evaluated by the study's own sweep (`study.sweep.run_time_sweep`),
one condition per row: every row programs device instance r from the same seed (sweep
seed, r), reads it at each time t from (seed, r, t) and seeds its forwards from (seed, r,
t, row name), so rows are compared on the same devices as far as their configs draw alike,
and records are resumable and reproducible exactly. A row in which nothing changes with
time (no drift, no read noise) is measured once, at t = 0. The DAC ranges are calibrated
once, on the ideal model (`calibrate_input_ranges`), and shared by every row.
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch import nn

from ..config import AnalogConfig
from ..inference import calibrate_input_ranges
from ..logs import get_logger
from ..nn.convert import analog_layers, analogize
from ..study.records import RecordLog
from ..study.sweep import Condition, SweepConfig, run_time_sweep, set_input_ranges
from .effects import EFFECTS, Row, build_rows

logger = get_logger(__name__)
Evaluate = Callable[[nn.Module], Union[float, Mapping[str, float]]]


@dataclass
class Diagnosis:
    """The rows of a diagnosis and their records; statistics per (row, time)."""

    rows: List[Row]
    times: Tuple[float, ...]
    records: List[dict]
    repeats: int
    higher_is_better: bool = True
    task: str = "diagnose"

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def values(self, name: str, t: Optional[float]) -> Dict[int, Optional[float]]:
        """{repeat: headline} of row `name` at time `t` (deterministic rows and rows that do not
        change with time: their one measurement, whatever `t`)."""
        row = self.row(name)
        at = (float(t) if row.timed else 0.0) if row.programmed else None
        return {r["repeat"]: r["headline"] for r in self.records
                if r["condition"] == name and r["t_seconds"] == at and r["repeat"] < self.repeats}

    def stats(self, name: str, t: Optional[float]) -> Tuple[float, float, int]:
        """(mean, SEM, n) of the headline over device instances (SEM 0 when n = 1; NaN mean
        when no value is defined)."""
        return _stats([v for v in self.values(name, t).values()])

    def gain(self, name: str, base: str, t: Optional[float]) -> Tuple[float, float, int]:
        """(mean, SEM, n) of how much better row `name` is than row `base` at `t` (the task's
        direction honoured: positive = better). Rows measured on the same device instances
        are paired by instance (SEM of the differences); against a deterministic row the
        SEM is that of `name`."""
        a, b = self.values(name, t), self.values(base, t)
        sign = 1.0 if self.higher_is_better else -1.0
        if len(b) == 1 and not self.row(base).programmed:
            ref = next(iter(b.values()))
            diffs = [] if ref is None else [v - ref for v in a.values() if v is not None]
        elif len(a) == 1 and not self.row(name).programmed:
            ref = next(iter(a.values()))
            diffs = [] if ref is None else [ref - v for v in b.values() if v is not None]
        else:
            diffs = [a[r] - b[r] for r in sorted(set(a) & set(b)) if a[r] is not None and b[r] is not None]
        mean, sem, n = _stats(diffs)
        return sign * mean, sem, n

    def attribution(self, t: Optional[float]) -> List[dict]:
        """Per non-ideality the config has on, ranked by the gain of switching it off (largest
        first; choices last): {"effect", "label", "cost_alone" (how much worse "only N" is than
        ideal tiles), "gain_removed" (how much better "all but N" — or the other choice — is than
        all on)}, each a (mean, SEM, n) tuple or None when that row does not exist."""
        out = []
        for name, e in EFFECTS.items():
            rows = {r.kind: r.name for r in self.rows if r.effect == name}
            if not rows:
                continue
            alone = rows.get("only")
            removed = rows.get("all-but") or rows.get("alternative")
            out.append({"effect": name, "label": e.label, "choice": e.choice, "only": alone, "removed": removed,
                        "cost_alone": None if alone is None else _neg(self.gain(alone, "ideal tiles", t)),
                        "gain_removed": self.gain(removed, "all on", t)})
        key = lambda d: (d["choice"], -_finite(d["gain_removed"][0]), -_finite((d["cost_alone"] or (0,))[0]))
        return sorted(out, key=key)

    def ranking(self, t: Optional[float]) -> List[str]:
        """The non-idealities (not the choices), most costly first (gain of switching it off)."""
        return [d["effect"] for d in self.attribution(t) if not d["choice"]]


def _stats(values: Sequence[Optional[float]]) -> Tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0, len(v)


def _neg(s: Tuple[float, float, int]) -> Tuple[float, float, int]:
    return -s[0], s[1], s[2]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def diagnose(model: nn.Module, analog_cfg: AnalogConfig, evaluate: Evaluate, calib_batches: Sequence = (),
             times: Sequence[float] = (1.0,), repeats: int = 4, seed: int = 0, log: Optional[RecordLog] = None,
             *, headline: Optional[Callable[[Mapping[str, float]], float]] = None, higher_is_better: bool = True,
             effects: Optional[Sequence[str]] = None, calibration_percentile: Optional[float] = 99.0,
             input_ranges: Optional[Dict[str, float]] = None, task: str = "diagnose",
             progress: bool = False) -> Diagnosis:
    """Measure `evaluate` on `model` (a digital model; put in eval mode, never modified) with each
    non-ideality of `analog_cfg` alone on and alone off; returns a `Diagnosis`.

    `evaluate(model)` returns the headline (a float) or a dict of metrics, of which
    `headline(metrics)` picks the headline. `calib_batches` (model kwargs) set the DAC ranges
    (`calibration_percentile` of |x|; `input_ranges` {layer: r} replaces the calibration; with
    neither the layers keep `dac.init_range`). Programmed rows are evaluated at each of `times`
    (seconds since programming) over `repeats` device instances seeded from `seed`. Records
    (`task`, condition = row name, t_seconds, repeat) go to `log` (a `RecordLog`; records it
    holds are reused, so an interrupted diagnosis resumes) or to a temporary one. `effects`
    restricts the rows to some entries of `EFFECTS`.
    """
    if not isinstance(analog_cfg, AnalogConfig):
        raise ValueError(f"diagnose: analog_cfg must be an AnalogConfig, got {type(analog_cfg).__name__}")
    if analog_layers(model):
        raise ValueError("diagnose: the model is already analogized; pass the digital model (and its "
                         "learned DAC ranges as input_ranges=, if any)")
    sweep = SweepConfig(times_seconds=times, repeats=repeats, seed=seed, calibration_percentile=calibration_percentile)
    rows = build_rows(analog_cfg, effects)
    fns = _metrics_fns(evaluate, headline)
    if log is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _run(model, rows, fns, calib_batches, input_ranges, sweep,
                        RecordLog(Path(tmp) / "diagnosis.jsonl"), higher_is_better, task, progress)
    return _run(model, rows, fns, calib_batches, input_ranges, sweep, log, higher_is_better, task, progress)


def _metrics_fns(evaluate: Evaluate, headline):
    """(model -> metrics dict, metrics -> headline) from the user's `evaluate` and `headline`."""
    def metrics_of(model: nn.Module) -> Dict[str, float]:
        v = evaluate(model)
        if isinstance(v, Mapping):
            if headline is None and "headline" not in v:
                raise ValueError("diagnose: evaluate returned a dict of metrics; pass headline=fn(metrics) "
                                 "to pick the headline")
            return dict(v)
        return {"headline": float(v)}
    pick = headline or (lambda m: m["headline"])
    return metrics_of, pick


def _ranges(model: nn.Module, cfg: AnalogConfig, calib_batches, percentile, fixed) -> Dict[str, float]:
    """DAC ranges of every analog layer: `fixed`, or calibrated on the ideal model, or the init range."""
    probe = analogize(copy.deepcopy(model), copy.deepcopy(cfg)).eval()
    if fixed:
        set_input_ranges(probe, fixed)
    elif calib_batches:
        calibrate_input_ranges(probe, calib_batches, percentile=percentile)
    return {name: float(layer.input_range.detach()) for name, layer in analog_layers(probe)}


def _run(model, rows: List[Row], metrics_fns, calib_batches, fixed, sweep: SweepConfig, log: RecordLog,
         higher_is_better: bool, task: str, progress: bool) -> Diagnosis:
    metrics_of, pick = metrics_fns
    model.eval()
    ranges = None
    for i, row in enumerate(rows, 1):
        times = sweep.times_seconds if row.timed else (0.0,)
        todo = [(t, r) for t in times for r in range(sweep.repeats)] if row.programmed else [(None, 0)]
        todo = [(t, r) for t, r in todo if not log.has((task, row.name, t, r))]
        if not todo:
            continue
        logger.info(f"diagnose: {row.name} ({i}/{len(rows)}, {len(todo)} evaluation(s))")
        if row.kind == "digital":
            _write(log, task, row.name, metrics_of(model), pick)
            continue
        if ranges is None:
            ranges = _ranges(model, rows[2].config, calib_batches, sweep.calibration_percentile, fixed)
        if row.kind == "ideal":  # analogized, never programmed: exactly F.linear
            ideal = analogize(copy.deepcopy(model), copy.deepcopy(row.config)).eval()
            set_input_ranges(ideal, ranges)
            _write(log, task, row.name, metrics_of(ideal), pick)
            del ideal
            continue
        cfg = SweepConfig(times_seconds=times, repeats=sweep.repeats, seed=sweep.seed)
        cond = Condition(row.name, compensation=row.config.compensation.enabled, gamma=row.config.pcm.gamma)
        run_time_sweep({"digital": model}, task, [cond], metrics_of, pick, row.config, cfg, log,
                       progress=progress, input_ranges={"digital": ranges})
    names = {r.name for r in rows}
    records = [r for r in log.records if r["task"] == task and r["condition"] in names]
    return Diagnosis(rows, sweep.times_seconds, records, sweep.repeats, higher_is_better, task)


def _write(log: RecordLog, task: str, name: str, metrics: Dict[str, float], pick) -> None:
    log.write({"task": task, "condition": name, "t_seconds": None, "repeat": 0, "metrics": metrics,
               "headline": pick(metrics)})
