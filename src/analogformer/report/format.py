"""Formatting shared by the report's tables and plots: time labels, cells, ordering."""
from __future__ import annotations

import math

_UNITS = [("y", 31_536_000), ("mo", 2_592_000), ("w", 604_800), ("d", 86_400), ("h", 3600),
          ("min", 60), ("s", 1)]


def _ordered(items, key) -> list:
    return list(dict.fromkeys(i[key] for i in items))


def _tkey(t):
    return (-1.0 if t is None else float(t))


def time_label(t_seconds) -> str:
    """"1 s", "1 h", "1 d", "1 w", "1 mo" (30 d), "1 y" (365 d); "—" for time-independent."""
    if t_seconds is None:
        return "—"
    t = float(t_seconds)
    fits = [(u, t / s) for u, s in _UNITS if t / s >= 1] or [("s", t)]
    for unit, value in fits:                 # largest unit giving a whole number
        if abs(value - round(value)) < 1e-9 * max(1.0, value):
            return f"{round(value)} {unit}"
    return f"{fits[0][1]:.3g} {fits[0][0]}"


def _cell(mean, sem, n, undefined=0, signed=False) -> str:
    """"mean ± SEM" in points; `undefined` records (metric undefined, e.g. a correlation
    of constant predictions) are named beside it, never silently left out of n."""
    note = f" ({undefined} of {n + undefined} undefined)" if undefined else ""
    if n == 0 or not math.isfinite(mean):
        return "n/a" + note
    m = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return (m if n == 1 else f"{m} ± {sem:.2f}") + note


def _base(r) -> str:
    """The condition without its stage suffix ("prune:dense" -> "prune")."""
    c, stage = r["condition"], r["stage"]
    for sep in (":", "-", "_", "/"):
        if stage and c.endswith(sep + stage) and len(c) > len(sep + stage):
            return c[: -len(sep + stage)]
    return c


CONDITION_LABELS = {
    "digital": "digital", "analog": "analog, compensated", "analog-nocomp": "analog, uncompensated",
    "analog-gamma0.5": "analog, γ = 0.5 devices", "hwa-digital": "HWA model, digital", "hwa": "HWA, compensated",
    "hwa-nocomp": "HWA, uncompensated", "hwa-gamma0.5": "HWA, γ = 0.5 devices",
    "hwa-int8": "HWA + INT8 attention", "hwa-int6": "HWA + INT6 attention",
    "pruned-digital": "pruned, digital", "pruned": "pruned, analog",
    "weight-noise": "analog + weight noise", "hwa-weight-noise": "HWA + weight noise",
}


def condition_label(c: str) -> str:
    """A legend label for a condition name (the name itself when unknown)."""
    base, at, ratio = c.partition("@")
    if at and base.endswith("weight-noise") and base in CONDITION_LABELS:  # "weight-noise@0.035"
        return f"{CONDITION_LABELS[base]} {ratio}"
    if at and base in CONDITION_LABELS:  # "pruned@0.333": the model pruned at that ratio
        return f"{CONDITION_LABELS[base]} (ratio {ratio})"
    return CONDITION_LABELS.get(c, c)
