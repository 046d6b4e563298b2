"""The pruning section of a report: dense / after pruning / refit / retrained per method and
ratio, with the retrained − dense difference, and the metric-vs-ratio plot per task."""
from __future__ import annotations

import math
import re
from pathlib import Path

from .format import _base, _cell, _ordered
from .plots import _plot_pruning

DIGITAL = "digital"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _prune_table(rows, factor: float = 100):
    """Rows (method, prune ratio) × columns dense / after pruning / after retraining / Δ; values
    × `factor` (100: scores in points; 1: a loss or perplexity as it is)."""
    dense = next((r for r in rows if r["stage"] == "dense"), None)
    others = [r for r in rows if r["stage"] != "dense"]
    stages = sorted(_ordered(others, "stage"), key=lambda s: (_STAGE_ORDER.get(s, len(_STAGE_ORDER)), str(s)))
    keys = _ordered([dict(k=(_base(r), r["prune_ratio"])) for r in others], "k")
    methods = _ordered([{"c": k[0]} for k in keys], "c")
    cells = {(_base(r), r["prune_ratio"], r["stage"]): r for r in others}
    d_cell = _cell(factor * dense["mean"], factor * dense["sem"], dense["n"]) if dense else ""
    delta = dense is not None and "retrained" in stages
    header = (["method", "prune ratio", "dense"] + [_STAGE_NAMES.get(s, str(s or "—")) for s in stages]
              + (["retrained − dense"] if delta else []))
    body = []
    for c, x in sorted(keys, key=lambda k: (k[1], methods.index(k[0]))):
        row = [c.removeprefix("prune-"), f"{x:g}", d_cell] + [
            _cell(factor * cells[(c, x, s)]["mean"], factor * cells[(c, x, s)]["sem"], cells[(c, x, s)]["n"])
            if (c, x, s) in cells else "" for s in stages]
        if delta:
            r = cells.get((c, x, "retrained"))
            row.append(_cell(factor * (r["mean"] - dense["mean"]), factor * math.hypot(r["sem"], dense["sem"]),
                             max(r["n"], dense["n"]), signed=True) if r else "")
        body.append(row)
    if not body and dense:
        body.append([_base(dense), "0", d_cell])
    return header, body


_STAGE_NAMES = {"pruned": "after pruning", "reconstructed": "after LS refit", "retrained": "after retraining"}
_STAGE_ORDER = {"pruned": 0, "reconstructed": 1, "retrained": 2}



def pruning_section(d: Path, st, task_name, metric_label, scale) -> list[tuple]:
    """Dense / pruned / retrained tables and plots per task; `scale(task)` is what a task's metric
    is multiplied by (100: points)."""
    B = []
    if st.prune_rows:
        emas = {r["ema_decay"] for r in st.records if r.get("ema_decay") is not None}
        B += [("h", 2, "Pruning"),
              ("p", "Digital headline metric (points, or as it is for a loss or perplexity) of each pruning method and ratio: the dense model, "
                    "right after pruning, and after retraining with the masks held. Methods are "
                    "<criterion>-<structure> (mac = seed 000 MAC contribution, obs = structured "
                    "Optimal Brain Surgeon (rows the others can least replace by least squares), "
                    "magnitude / l1 / l2 = weight norms, random = the chance baseline; -ls = "
                    "least-squares refit after pruning); the pruned models on tiles are the "
                    "`pruned` conditions of the time tables above."
                    + (" -prog = pruned in rounds (`pruning.progressive`): each ratio starts from the "
                       "previous ratio's retrained model (first seed) and keeps the units removed there, "
                       "so \"after pruning\" is measured from that model, not from the dense one."
                       if any("-prog:" in r["condition"] for r in st.prune_rows) else "")
                    + (" Method `none` is the control: the dense model retrained with the same recipe."
                       if any(r["condition"] == "prune-none:retrained" for r in st.prune_rows) else "")
                    + (" After retraining is the mean ± SEM over the retraining seeds "
                       "(`pruning.retrain_seeds`: the same pruned state retrained with different seeds; "
                       "here ± is not over device instances); the model on tiles is the first seed's."
                       if any(r["stage"] == "retrained" and r["n"] > 1 for r in st.prune_rows) else "")
                    + (" After retraining is the retrained state with the best dev score among the "
                       "evaluations during retraining (`keep_best`), i.e. selected on the split it is "
                       "reported on." if any(r.get("best_step") is not None for r in st.records) else "")
                    + (" The retrained weights are an exponential moving average over the retraining "
                       f"steps (`ema_decay` {', '.join(sorted({f'{v:g}' for v in emas}))}), starting from "
                       "the state the retraining started from." if emas else ""))]
        for task in _ordered(st.prune_rows, "task"):
            rows_t = [r for r in st.prune_rows if r["task"] == task]
            f = f"pruning_{_safe(task)}.png"
            base = st.cell.get((task, DIGITAL, None))
            _plot_pruning(d / f, rows_t, base, f"{metric_label(task, st.metric[task])[:-4]} vs prune ratio",
                          metric_label(task, st.metric[task]), scale(task))
            B += [("h", 3, task_name(task)), ("table", *_prune_table(rows_t, scale(task))),
                  ("img", f"{task_name(task)} pruning", f)]
    return B
