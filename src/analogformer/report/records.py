"""Records of a study folder: reading and validating ``results.jsonl`` and summarising them
(mean, SEM and n per task × condition × time; pruning records by ratio and stage)."""
from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from .format import _ordered, _tkey, time_label


def load_records(path) -> list[dict]:
    """Valid records of a ``results.jsonl`` (or a ``results.json`` list); bad lines warn."""
    path = Path(path)
    hint = ("run `analogformer study CONFIG.yaml --out DIR` first (it writes "
            "DIR/results.jsonl as records are produced)")
    if not path.is_file():
        raise ValueError(f"{path} does not exist; {hint}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        raw = [(i + 1, json.dumps(r)) for i, r in enumerate(json.loads(text or "[]"))]
    else:
        raw = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    records = []
    for lineno, line in raw:
        try:
            records.append(_validate(json.loads(line)))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            warnings.warn(f"{path}:{lineno}: skipped record ({err})", stacklevel=2)
    if not records:
        raise ValueError(f"{path} holds no valid records; {hint}")
    _refuse_duplicates(path, records)
    return records


def _refuse_duplicates(path: Path, records) -> None:
    """A key twice would count twice in n and shrink the SEM: name the records, build nothing."""
    seen: dict = {}
    for i, r in enumerate(records, 1):
        k = (r["task"], r["condition"], r["t_seconds"], r.get("repeat", 0), r.get("prune_ratio"))
        if k in seen:
            raise ValueError(f"{path}: record {k} appears twice (records {seen[k]} and {i}): two runs "
                             "wrote to this folder; keep one of the two lines, then build the report again")
        seen[k] = i


def _validate(rec) -> dict:
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    for key in ("task", "condition"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise ValueError(f"{key!r} must be a non-empty string")
    metrics = rec.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' must be an object")
    if "headline" not in rec and len(metrics) == 1:
        rec["headline"] = next(iter(metrics.values()))
    if rec.get("headline") is not None and not isinstance(rec.get("headline"), (int, float)):
        raise ValueError("'headline' must be a number, or null where the metric is undefined")
    t = rec.get("t_seconds")
    if t is not None and (not isinstance(t, (int, float)) or t < 0):
        raise ValueError("'t_seconds' must be null or a number >= 0")
    return {**rec, "metrics": metrics, "t_seconds": None if t is None else float(t),
            "prune_ratio": rec.get("prune_ratio"), "stage": rec.get("stage")}


def _stats(values) -> tuple[float, float, int, int]:
    """(mean, SEM, n, undefined) over the defined values; `undefined` counts the null / NaN
    ones (a metric undefined for that record), which the tables then name beside the cell."""
    values = list(values)
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    undefined = len(values) - len(v)
    if len(v) == 0:
        return math.nan, math.nan, 0, undefined
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), sem, len(v), undefined


def summarize(records) -> list[dict]:
    """Mean, SEM and n of the headline and of each metric per (task, condition, t_seconds).

    Pruning records are kept apart by their ``prune_ratio`` and ``stage``. Rows come in
    order of first appearance of task and condition, then by time (time-independent first).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["condition"], r.get("t_seconds"), r.get("prune_ratio"),
                r.get("stage"))].append(r)
    tasks, conds = _ordered(records, "task"), _ordered(records, "condition")
    rows = []
    for key in sorted(groups, key=lambda k: (tasks.index(k[0]), conds.index(k[1]),
                                              _tkey(k[2]), _tkey(k[3]), str(k[4]))):
        recs = groups[key]
        mean, sem, n, undefined = _stats(r["headline"] for r in recs)
        names = _ordered([{"m": m} for r in recs for m in r["metrics"]], "m")
        metrics = {m: dict(zip(("mean", "sem", "n", "undefined"), _stats(r["metrics"].get(m) for r in recs)))
                   for m in names}
        rows.append(dict(task=key[0], condition=key[1], t_seconds=key[2], time=time_label(key[2]),
                         prune_ratio=key[3], stage=key[4], n=n, mean=mean, sem=sem, undefined=undefined,
                         metrics=metrics))
    return rows
