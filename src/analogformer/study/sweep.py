"""Accuracy over time since programming: conditions × time points × device repeats.

For each analog condition group (same fine-tuned model, γ and attention precision) the
model is analogized once and its DAC ranges calibrated once; then for each repeat it is
programmed once (a new device instance) and drifted to every time point; conditions that
differ only by drift compensation are evaluated on the very same conductance read
(`set_compensation`). Every draw is seeded from values, never positions
(`seeding.derive_seed`): programming from (sweep seed, repeat), each read from (sweep seed,
repeat, time in seconds), the forwards after it from (…, condition name), each layer from
its name. An interrupted sweep that resumes reproduces exactly the records it would have
written, and a study that grows (time points, repeats, conditions) or is split across
folders gives the records of one fresh run of the larger config.

Records go to a JSON-lines file as they are produced:
    {"task", "condition", "t_seconds", "repeat", "metrics", "headline"}
The digital baseline is one record with `t_seconds: null`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import AnalogConfig, check_positive, fail
from ..inference import add_weight_noise, calibrate_input_ranges, drift, program, reseed_noise, set_compensation
from ..nn.convert import analog_layers, analogize, shared_copy
from ..seeding import derive_seed
from .records import RecordLog

DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 604800.0, 2592000.0)  # 1 s, 1 h, 1 d, 1 w, 1 month


@dataclass(frozen=True)
class Condition:
    """One evaluated setting. `model` names the fine-tuned model it uses ("digital" or
    "hwa"); `analog=False` evaluates that model digitally (one record, no time)."""

    name: str
    model: str = "digital"
    analog: bool = True
    compensation: bool = True
    gamma: float = 1.0
    attention_bits: Optional[int] = None
    weight_noise: Optional[float] = None
    """Additive Gaussian weight noise on every read, std relative to the tile's max |W|
    (`inference.add_weight_noise`), on top of the PCM model; None = none. A study expands a
    `*weight-noise` condition into one per `sweep.weight_noise_levels` ("weight-noise@0.035")."""


WEIGHT_NOISE_LEVELS = (0.0175, 0.035, 0.07)  # seed 002: "standard PCM weight noise" 0.0175, ×2, ×4

CONDITIONS: Dict[str, Condition] = {c.name: c for c in (
    Condition("digital", analog=False),
    Condition("analog-nocomp", compensation=False),
    Condition("analog"),
    Condition("analog-gamma0.5", gamma=0.5),
    Condition("hwa-digital", model="hwa", analog=False),
    Condition("hwa-nocomp", model="hwa", compensation=False),
    Condition("hwa", model="hwa"),
    Condition("hwa-gamma0.5", model="hwa", gamma=0.5),
    Condition("hwa-int8", model="hwa", attention_bits=8),
    Condition("hwa-int6", model="hwa", attention_bits=6),
    Condition("weight-noise", weight_noise=WEIGHT_NOISE_LEVELS[0]),
    Condition("hwa-weight-noise", model="hwa", weight_noise=WEIGHT_NOISE_LEVELS[0]),
    Condition("pruned-digital", model="pruned", analog=False),
    Condition("pruned", model="pruned"),
)}


def get_condition(name: str) -> Condition:
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; allowed: {list(CONDITIONS)}")
    return CONDITIONS[name]


def _times(field: str, times) -> Tuple[float, ...]:
    """Validated time points in seconds: numbers >= 0, finite, none twice."""
    if isinstance(times, (int, float)) and not isinstance(times, bool):
        times = [times]
    if isinstance(times, (str, bytes, dict)) or not isinstance(times, (list, tuple)):
        fail("SweepConfig", field, f"must be a list of seconds, e.g. [1, 3600, 2592000], got {times!r}")
    out = []
    for t in times:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            fail("SweepConfig", field, f"times must be finite and >= 0 (numbers of seconds), got {t!r}")
        out.append(float(t))
    if not out:
        fail("SweepConfig", field, "needs at least one time point")
    dup = sorted({t for t in out if out.count(t) > 1})
    if dup:
        fail("SweepConfig", field, f"lists {dup} more than once; name each time point once")
    return tuple(out)


@dataclass
class SweepConfig:
    """Time points, repeats and seeds of an over-time evaluation."""

    times_seconds: Tuple[float, ...] = DEFAULT_TIMES
    """Seconds since programming at which every analog condition is evaluated (default 1 s,
    1 h, 1 d, 1 w, 1 month)."""
    repeats: int = 25
    """Device instances (independent programmings) per time point."""
    seed: int = 0
    """Seed of the device instances: programming, reads and forwards are seeded from it."""
    calibration_batches: int = 4
    """Unlabelled training batches that calibrate the DAC ranges (of models without learned
    HWA ranges) and the INT-N attention scales."""
    calibration_percentile: Optional[float] = 99.0
    """Percentile of |x| that sets each layer's DAC range; null = max |x|. 99.99 lets outliers
    set r: the output noise then swamps typical inputs."""
    eval_batch_size: int = 64
    """Batch size of the dev-set evaluations."""
    times_per_condition: Optional[Dict[str, Tuple[float, ...]]] = None
    """Condition name -> the subset of `times_seconds` it is evaluated at (default: all), e.g.
    {hwa-int6: [2592000]} to add INT6 attention only at 1 month."""
    weight_noise_levels: Tuple[float, ...] = WEIGHT_NOISE_LEVELS
    """Additive weight-noise levels (std relative to each tile's max |W|, aihwkit's
    `rel_to_actual_wmax`) of the `weight-noise` / `hwa-weight-noise` conditions: each becomes
    one condition per level, "weight-noise@0.035", evaluated on top of the PCM model."""

    def __post_init__(self):
        self.times_seconds = _times("times_seconds", self.times_seconds)
        for n in ("repeats", "calibration_batches", "eval_batch_size"):
            check_positive(self, n, integer=True)
        if self.calibration_percentile is not None and not 0 < self.calibration_percentile <= 100:
            fail("SweepConfig", "calibration_percentile", "must be in (0, 100] or null (max |x|)")
        if self.times_per_condition is not None:
            if not isinstance(self.times_per_condition, dict):
                fail("SweepConfig", "times_per_condition",
                      f"must map condition names to lists of times, got {self.times_per_condition!r}")
            fixed = {}
            for name, times in self.times_per_condition.items():
                if name not in CONDITIONS:
                    fail("SweepConfig", "times_per_condition",
                          f"unknown condition {name!r}; allowed: {list(CONDITIONS)}")
                times = _times(f"times_per_condition.{name}", times)
                extra = [t for t in times if t not in self.times_seconds]
                if not times or extra:
                    fail("SweepConfig", "times_per_condition",
                          f"{name}: times must be a non-empty subset of times_seconds "
                          f"{list(self.times_seconds)}; not in it: {extra}")
                fixed[name] = times
            self.times_per_condition = fixed
        levels = self.weight_noise_levels
        if isinstance(levels, (int, float)) and not isinstance(levels, bool):
            levels = [levels]
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                       for v in levels) or len(set(map(float, levels))) != len(levels)):
            fail("SweepConfig", "weight_noise_levels", "must be a non-empty list of distinct numbers > 0 (std "
                 f"relative to the tile's max |W|), e.g. [0.0175, 0.035, 0.07]; got {self.weight_noise_levels!r}")
        self.weight_noise_levels = tuple(float(v) for v in levels)

    def times_for(self, condition: str) -> Tuple[float, ...]:
        """The time points `condition` is evaluated at."""
        per = self.times_per_condition or {}
        return per.get(condition, per.get(condition.split("@")[0], self.times_seconds))


def set_input_ranges(model: nn.Module, ranges: Dict[str, float]) -> None:
    """Set DAC ranges by layer name; every analog layer must be named in `ranges`."""
    for name, layer in analog_layers(model):
        if name not in ranges:
            raise ValueError(f"input ranges given for this model miss layer {name!r}")
        layer.input_range.data.fill_(float(ranges[name]))


Evaluator = Callable[[nn.Module], Dict[str, float]]


def run_time_sweep(models: Dict[str, nn.Module], task: str, conditions: Sequence[Condition],
                   evaluate: Evaluator, headline: Callable[[Dict[str, float]], float],
                   analog_cfg: AnalogConfig, cfg: SweepConfig, log: RecordLog,
                   calib_batches: Sequence[dict] = (), progress: bool = True,
                   prepare: Optional[Callable[[nn.Module, Condition], None]] = None,
                   input_ranges: Optional[Dict[str, Dict[str, float]]] = None,
                   runner: Optional[Callable] = None) -> List[dict]:
    """Evaluate `conditions` of `models` over time and append records to `log`.

    `evaluate(model) -> metrics` runs the task's eval set; `headline(metrics)` picks the
    headline value. `calib_batches` (model kwargs) set the DAC ranges. `prepare(model,
    condition)` adjusts an analogized model before programming (e.g. INT-N attention).
    `input_ranges[model name]` ({layer name: r}, e.g. learned by HWA training) replaces
    the calibration for that model. `runner` (e.g. `ray_sweep.RaySweep`) evaluates the same
    units elsewhere and emits their records in this function's order; None = here, in turn.
    Returns the records written by this call.
    """
    for c in conditions:
        if c.model not in models:
            raise ValueError(f"condition {c.name!r} needs the {c.model!r} model, which this study "
                             f"has not trained; available: {sorted(models)}")
    written: List[dict] = []

    def emit(cond: Condition, t, repeat: int, metrics: Dict[str, float]):
        rec = {"task": task, "condition": cond.name, "t_seconds": t, "repeat": repeat,
               "metrics": metrics, "headline": headline(metrics)}
        if cond.attention_bits is not None:
            rec["attention_bits"] = cond.attention_bits
        log.write(rec)
        written.append(rec)

    digital = [c for c in conditions if not c.analog and not log.has((task, c.name, None, 0))]
    groups: Dict[Tuple, List[Condition]] = {}
    for c in conditions:
        if c.analog:
            groups.setdefault((c.model, c.gamma, c.attention_bits, c.weight_noise), []).append(c)
    todo = len(digital) + sum(1 for c in conditions if c.analog for t in cfg.times_for(c.name)
                              for r in range(cfg.repeats) if not log.has((task, c.name, t, r)))
    bar = tqdm(total=todo, desc=f"{task} sweep", disable=not progress or todo == 0, leave=False)
    if runner is not None:  # the units below (a digital condition; a group's repeat), elsewhere
        plan = []
        for (model_name, gamma, attn_bits, *_), conds in groups.items():
            repeats = sorted({r for r in range(cfg.repeats) for t in cfg.times_seconds for c in conds
                              if t in cfg.times_for(c.name) and not log.has((task, c.name, t, r))})
            if repeats:
                plan.append((conds, repeats, lambda m=model_name, g=gamma, a=attn_bits, cs=conds: _analog_model(
                    models[m], m, g, a, cs[0], analog_cfg, cfg, calib_batches, prepare,
                    (input_ranges or {}).get(m))))
        runner(task, models, digital, plan, evaluate, emit, bar, cfg, log)
        bar.close()
        return written
    for c in digital:
        m = models[c.model]
        m.eval()
        emit(c, None, 0, evaluate(m))
        bar.update(1)
    for (model_name, gamma, attn_bits, _), conds in groups.items():
        pending = [(r, t, c) for r in range(cfg.repeats) for t in cfg.times_seconds
                   for c in conds if t in cfg.times_for(c.name) and not log.has((task, c.name, t, r))]
        if not pending:
            continue
        model = _analog_model(models[model_name], model_name, gamma, attn_bits, conds[0], analog_cfg, cfg,
                              calib_batches, prepare, (input_ranges or {}).get(model_name))
        for r in sorted({p[0] for p in pending}):
            _sweep_repeat(model, task, conds, r, cfg, log, evaluate, emit, bar)
        del model
    bar.close()
    return written


def _analog_model(digital: nn.Module, model_name: str, gamma: float, attn_bits: Optional[int],
                  first: Condition, analog_cfg: AnalogConfig, cfg: SweepConfig, calib_batches,
                  prepare, fixed: Optional[Dict[str, float]]) -> nn.Module:
    """An analogized copy of `digital` for one condition group, its DAC ranges set (`fixed`)
    or calibrated, and `prepare`d (e.g. INT-N attention)."""
    acfg = copy.deepcopy(analog_cfg)
    acfg.pcm.gamma = gamma
    model = analogize(shared_copy(digital), acfg).eval()  # shares the weights: no second copy
    # calibration forwards run the unprogrammed analog model, whose output noise comes
    # from the global RNG: seed it per group (and restore it after), so that a resumed
    # sweep in a fresh process calibrates exactly as the first run did
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "calibration", model_name, float(gamma), attn_bits))
        if fixed:
            set_input_ranges(model, fixed)
        elif calib_batches:
            calibrate_input_ranges(model, calib_batches, percentile=cfg.calibration_percentile)
        if prepare is not None:
            prepare(model, first)
    return model


def _sweep_repeat(model: nn.Module, task: str, conds: Sequence[Condition], r: int, cfg: SweepConfig,
                  log: RecordLog, evaluate: Evaluator, emit, bar) -> None:
    """One device instance: program once, drift to every time point, evaluate the group's
    conditions still missing there on the same conductance read."""
    with torch.no_grad():
        program(model, seed=derive_seed(cfg.seed, "program", r))
    for t in cfg.times_seconds:
        todo_c = [c for c in conds if t in cfg.times_for(c.name) and not log.has((task, c.name, t, r))]
        if not todo_c:
            continue
        with torch.no_grad():
            drift(model, t, read_seed=derive_seed(cfg.seed, "read", r, float(t)))
            if conds[0].weight_noise is not None:  # one level per group; the same draw scaled per level
                add_weight_noise(model, conds[0].weight_noise, seed=derive_seed(cfg.seed, "weight-noise", r, float(t)))
        for c in todo_c:
            set_compensation(model, c.compensation)
            reseed_noise(model, derive_seed(cfg.seed, "forward", r, float(t), c.name))
            emit(c, t, r, evaluate(model))
            bar.update(1)
            bar.set_postfix(cond=c.name, t=f"{t:g}s", rep=r)
