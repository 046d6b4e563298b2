"""Study report: records (``results.jsonl``) -> JSON, CSV, Markdown + HTML tables and PNG plots.

``build_report(DIR)`` reads ``DIR/results.jsonl`` (one record per task × condition × time ×
repeat, as the study writes them) and writes ``results.json``, ``summary.csv``,
``report.md``, ``report.html`` and the plots next to it. Metrics are stored on a [0, 1]
scale; tables and plots show them ×100 ("points"). SEM = std(ddof=1) / √n, 0 when n = 1.

The report is built once as a list of blocks (heading, paragraph, table, image, code) and
rendered twice, so the Markdown and the HTML page always carry the same content.
"""
from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..tasks.registry import describe, find_task
from .format import _cell, _ordered, _tkey, time_label
from .plots import _plot_time
from .generations import generations_section
from .pruning import pruning_section
from .records import load_records, summarize
from .render import _html, _md

__all__ = ["load_records", "summarize", "time_label", "build_report"]

DIGITAL = "digital"
METRIC_NAMES = {"headline": "headline"}


def task_name(task: str) -> str:
    """How a record key is shown (the registered task's display name)."""
    return describe(task).display_name


def metric_name(task: str, metric: str) -> str:
    return {**METRIC_NAMES, **describe(task).metric_names}.get(metric, metric)


def _sign(task: str) -> int:
    """+1 where a higher headline is better, -1 where lower is (a loss / perplexity)."""
    return 1 if describe(task).higher_is_better else -1


def _scale(task: str) -> float:
    """What a task's metrics are multiplied by in tables and plots (100: scores in points)."""
    return describe(task).metric_scale


def _headline_name(task, recs) -> str:
    """The metric key the headline equals in every record of a task, else "headline"."""
    common = None
    for r in (r for r in recs if r["headline"] is not None and math.isfinite(r["headline"])):
        keys = {m for m, v in r["metrics"].items()
                if isinstance(v, (int, float)) and math.isclose(v, r["headline"], abs_tol=1e-12)}
        common = keys if common is None else common & keys
    # the task's own headline first: metrics that coincide (SQuAD EM = F1 = 1) must not rename it
    for m in (describe(task).headline_metric, "accuracy", "mcc", "acc_and_f1", "pearson_and_spearman",
              *sorted(common or ())):
        if m in (common or ()):
            return m
    return describe(task).headline_metric


# ----------------------------------------------------------------------------- analysis
class _Study:
    """Summary rows arranged for the tables and plots (all values in points)."""

    def __init__(self, records):
        self.records, self.rows = records, summarize(records)
        time_rows = [r for r in self.rows if r["prune_ratio"] is None]
        self.prune_rows = [r for r in self.rows if r["prune_ratio"] is not None]
        self.tasks = _ordered(time_rows, "task") if time_rows else []
        self.conditions = _ordered(time_rows, "condition") if time_rows else []
        self.times = sorted({r["t_seconds"] for r in time_rows}, key=_tkey)
        self.cell = {(r["task"], r["condition"], r["t_seconds"]):
                     (_scale(r["task"]) * r["mean"], _scale(r["task"]) * r["sem"], r["n"], r["undefined"])
                     for r in time_rows}
        styled = [c for c in _ordered(records, "condition") if c != DIGITAL]
        self.style = {c: (f"C{i % 10}", "osD^v<>ph*"[i % 10]) for i, c in enumerate(styled)}
        self.style[DIGITAL] = ("k", "o")
        self.metric = {t: _headline_name(t, [r for r in records if r["task"] == t])
                       for t in _ordered(records, "task")}

    def glue(self):
        """{(condition, t): (mean, sem, n_min)} over the tasks, where every task has the point.

        MNLI-m and MNLI-mm are averaged into one MNLI entry first (GLUE-leaderboard style);
        SEM of the average = √(Σ SEM²) / K, the tasks being independent runs.
        """
        groups = defaultdict(list)
        for t in self.tasks:  # record keys of one registered task (MNLI-m / -mm) count once
            groups[_task_of(t)].append(t)
        out = {}
        for c in self.conditions:
            for t in self.times:
                if all((task, c, t) in self.cell for task in self.tasks):
                    parts = [[self.cell[(task, c, t)] for task in g] for g in groups.values()]
                    means = [np.mean([p[0] for p in g]) for g in parts]
                    sems = [math.sqrt(sum(p[1] ** 2 for p in g)) / len(g) for g in parts]
                    n = min(p[2] for g in parts for p in g)
                    out[(c, t)] = (float(np.mean(means)),
                                   math.sqrt(sum(s * s for s in sems)) / len(sems), n)
        return out

    def series(self, task):
        """{condition: {t: (mean, sem, n)}} of one task (glue average for task=None)."""
        src = self.glue() if task is None else {(c, t): v for (k, c, t), v in self.cell.items()
                                                if k == task}
        out = {c: {} for c in self.conditions}
        for (c, t), v in src.items():
            out[c][t] = v
        return {c: v for c, v in out.items() if v}


def _task_of(key: str) -> str:
    try:
        return find_task(key).name
    except ValueError:
        return key


def average_group(tasks) -> str | None:
    """The benchmark whose average the report shows ("GLUE"), when every task belongs to it."""
    groups = {describe(t).average_group for t in tasks}
    return groups.pop() if len(groups) == 1 and len(tasks) > 1 else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- sections
def _col(t) -> str:
    return "t-indep." if t is None else time_label(t)


def _overview(st: _Study, records, skipped) -> str:
    reps = sorted({r["n"] for r in st.rows})
    rep = f"{reps[0]}" if len(reps) == 1 else f"{reps[0]}–{reps[-1]}"
    tasks = ", ".join(task_name(t) for t in _ordered(records, "task"))
    timed = [t for t in st.times if t is not None]
    text = (f"{len(records)} records: {len(_ordered(records, 'task'))} task(s) ({tasks}) under "
            f"{len(_ordered(records, 'condition'))} condition(s) "
            f"({', '.join(_ordered(records, 'condition'))})")
    if timed:
        text += f", evaluated {len(timed)} time point(s) after programming ({', '.join(map(time_label, timed))})"
    text += f", with {rep} repeat(s) (independent device instances) per point."
    if st.prune_rows:
        text += f" Pruning: {len(st.prune_rows)} (task, ratio, stage) points."
    if skipped:
        text += f" {skipped} unreadable line(s) of results.jsonl were skipped."
    keys = _ordered(records, "task")
    raw = [task_name(t) for t in keys if _scale(t) != 100]
    if raw:  # a perplexity or a loss is shown as it is
        text += (f" {', '.join(raw)}: values as they are, lower is better"
                 + ("; the other tasks: in points (metric × 100)." if len(raw) < len(keys) else "."))
    else:
        text += " Values are in points (metric × 100)."
    return text + (" ± is the standard error of the mean over repeats (a cell without ± has one repeat).")


def _time_table(st: _Study, values: dict) -> tuple[list, list]:
    """values: {(condition, t): (mean, sem, n)} -> header, rows (condition × time)."""
    times = [t for t in st.times if any((c, t) in values for c in st.conditions)]
    conds = [c for c in st.conditions if any((c, t) in values for t in times)]
    rows = [[c] + [_cell(*values[(c, t)]) if (c, t) in values else "" for t in times]
            for c in conds]
    return ["condition"] + [_col(t) for t in times], rows


def _drop_table(st: _Study, glue: dict):
    group = average_group(st.tasks)
    ref = {}
    for task in st.tasks:
        pts = [t for t in st.times if (task, DIGITAL, t) in st.cell]
        if pts:
            ref[task] = st.cell[(task, DIGITAL, pts[0])]     # t-indep. first, else earliest
    digital_glue = [v for (c, t), v in sorted(glue.items(), key=lambda kv: _tkey(kv[0][1]))
                    if c == DIGITAL]
    rows = []
    for c in st.conditions:
        ts = [t for t in st.times if t is not None and any((k, c, t) in st.cell for k in st.tasks)]
        if c == DIGITAL or not ts:
            continue
        t = ts[-1]
        row = [c, time_label(t)]
        for task in st.tasks:
            v, d = st.cell.get((task, c, t)), ref.get(task)
            row.append(_cell(_sign(task) * (d[0] - v[0]), math.hypot(d[1], v[1]), min(d[2], v[2]), signed=True)
                       if v and d else "n/a")
        if group:
            v = glue.get((c, t))
            d = digital_glue[0] if digital_glue else None
            row.append(_cell(d[0] - v[0], math.hypot(d[1], v[1]), min(d[2], v[2]), signed=True)
                       if v and d else "n/a")
        rows.append(row)
    header = ["condition", "at"] + [task_name(t) for t in st.tasks]
    return header + ([f"{group} avg"] if group else []), rows


def _metric_label(task, metric) -> str:
    return f"{task_name(task)} {metric_name(task, metric)}" + (" (%)" if _scale(task) == 100 else "")


def _sections(d: Path, st: _Study, records, skipped, title) -> list[tuple]:
    return ([("h", 1, title), ("p", _overview(st, records, skipped))] + _time_sections(d, st, records)
            + pruning_section(d, st, task_name, _metric_label, _scale) + generations_section(d, task_name) + _extras(d))


def _time_sections(d: Path, st: _Study, records) -> list[tuple]:
    """The metric-over-time tables, the benchmark average, the drop table, all metrics, plots."""
    B = []
    group = average_group(st.tasks)
    glue = st.glue() if group else {}
    if st.tasks:
        B.append(("h", 2, "Headline metric vs time since programming"))
        for task in st.tasks:
            B.append(("h", 3, f"{task_name(task)} — {metric_name(task, st.metric[task])}"))
            B.append(("table", *_time_table(st, {(c, t): v for (k, c, t), v in st.cell.items() if k == task})))
    if group:
        names = ", ".join(task_name(t) for t in st.tasks)
        halves = [t for t in st.tasks if _task_of(t) != t]
        mnli = (f" ({' and '.join(map(task_name, halves))} count once, as their mean)"
                if len(halves) > 1 else "")
        B += [("h", 2, f"{group} average"),
              ("p", f"Unweighted mean of the headline metric over {names}{mnli}; a cell appears "
                    "only where every task has that point. SEM = √(Σ SEM²)/K over the K tasks.")]
        B.append(("table", *_time_table(st, glue)) if glue else
                 ("p", "No (condition, time) point is complete over all tasks."))
    header, rows = _drop_table(st, glue)
    B.append(("h", 2, "Drop vs digital at the last time point"))
    if rows and any(k for k in st.tasks if any(c == DIGITAL for (t, c, _) in st.cell if t == k)):
        B += [("p", "Digital minus condition (positive = score lost; for a metric where "
                    "lower is better, such as a perplexity, condition minus digital), in the units of the "
                    "tables above, at each condition's last time point; ± combines both SEMs."),
              ("table", header, rows)]
    else:
        B.append(("p", "Not available: the records have no `digital` baseline or no timed condition."))
    multi = [t for t in _ordered(records, "task")
             if any(len(r["metrics"]) > 1 for r in st.rows if r["task"] == t)]
    if multi:
        B.append(("h", 2, "All metrics"))
        for task in multi:
            rows_t = [r for r in st.rows if r["task"] == task and r["prune_ratio"] is None]
            names = _ordered([{"m": m} for r in rows_t for m in r["metrics"]], "m")
            B += [("h", 3, task_name(task)),
                  ("table", ["condition", "time"] + [metric_name(task, m) for m in names],
                   [[r["condition"], _col(r["t_seconds"])] + [
                       _cell(_scale(task) * r["metrics"][m]["mean"], _scale(task) * r["metrics"][m]["sem"],
                             r["metrics"][m]["n"], r["metrics"][m]["undefined"]) if m in r["metrics"] else ""
                       for m in names]
                    for r in rows_t])]
    return B + _time_plots(d, st, group, glue)


def _time_plots(d: Path, st: _Study, group, glue) -> list[tuple]:
    plots = []
    for task in [k for k in st.tasks if any(t is not None for (k2, _, t) in st.cell if k2 == k)]:
        f = f"metric_vs_time_{_safe(task)}.png"
        ylabel = _metric_label(task, st.metric[task])
        _plot_time(d / f, st.series(task), st.style, f"{ylabel.removesuffix(' (%)')} vs time since programming",
                   ylabel)
        plots.append((f"{task_name(task)} vs time", f))
        noisy = [c for c in st.conditions if c.partition("@")[0].endswith("weight-noise")]
        if noisy:  # seed 002's figure: one line per weight-noise level, beside the PCM model alone
            keep = {DIGITAL, "hwa-digital", *noisy, *(c.partition("@")[0].replace("weight-noise", "") or "analog"
                                                       for c in noisy)}
            keep = {k.rstrip("-") for k in keep}
            f = f"weight_noise_vs_time_{_safe(task)}.png"
            _plot_time(d / f, {c: v for c, v in st.series(task).items() if c in keep}, st.style,
                       f"{ylabel.removesuffix(' (%)')} vs time, per weight-noise level (std / max|W| of the tile)", ylabel)
            plots.append((f"{task_name(task)} vs time per weight-noise level", f))
    if group and any(t is not None for _, t in glue):
        f = f"{_safe(group.lower())}_average_vs_time.png"
        _plot_time(d / f, st.series(None), st.style,
                   f"{group} average ({', '.join(map(task_name, st.tasks)) if len(st.tasks) < 5 else f'{len(st.tasks)} tasks'})"
                   " vs time since programming", f"{group} average score (%)")
        plots.append((f"{group} average vs time", f))
    return [("h", 2, "Plots")] + [("img", a, f) for a, f in plots] if plots else []


def _extras(d: Path) -> list[tuple]:
    B = []
    tile_mds = sorted(d.glob("*tiles*.md"), key=lambda p: (p.name != "tiles.md", p.name))
    if tile_mds or (d / "tiles.png").is_file():
        B.append(("h", 2, "Tile mapping"))
        for p in tile_mds:
            B += [("p", f"`{p.name}`:"), ("md", p.read_text(encoding="utf-8"))]
        if (d / "tiles.png").is_file():
            B.append(("img", "tile mapping", "tiles.png"))
    if (d / "energy.md").is_file():
        B += [("h", 2, "Attention energy"), ("md", (d / "energy.md").read_text(encoding="utf-8"))]
    for md in sorted(d.glob("diagnosis/*/diagnosis.md")):  # `analogformer diagnose` run on this study
        rel = md.parent.relative_to(d).as_posix()
        text = md.read_text(encoding="utf-8").replace("](diagnosis.png)", f"]({rel}/diagnosis.png)")
        text = re.sub(r"^# [^\n]*\n+", "", text, count=1)  # its title: the section heading below names it
        text = re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m[1]) + 2) + " ", text, flags=re.M)
        B += [("h", 2, f"Diagnosis: {task_name(md.parent.name)}"),
              ("p", f"What each non-ideality costs, from `analogformer diagnose` on this study "
                    f"(records and figure in `{rel}/`)."), ("md", text)]
    if (d / "artifacts.json").is_file():
        try:
            arts = json.loads((d / "artifacts.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            warnings.warn(f"{d / 'artifacts.json'} is not valid JSON ({err}); figures skipped")
            arts = {}
        found = [(t, f) for t, f in arts.items() if (d / f).is_file()]
        for t, f in arts.items():
            if (d / f).is_file() is False:
                warnings.warn(f"artifacts.json lists {f!r} ({t}) but {d / f} does not exist")
        if found:
            B += [("h", 2, "Other figures")] + [x for t, f in found for x in (("h", 3, t), ("img", t, f))]
    if (d / "config.yaml").is_file():
        B += [("h", 2, "Configuration"),
              ("code", "config.yaml", "yaml", (d / "config.yaml").read_text(encoding="utf-8"))]
    if (d / "environment.json").is_file():
        env = json.loads((d / "environment.json").read_text(encoding="utf-8"))
        rows = [[str(k), _env_value(k, v)] for k, v in env.items()]
        B += [("h", 2, "Environment"), ("table", ["item", "value"], rows)]
    return B


def _env_value(key, value) -> str:
    if isinstance(value, (int, float)) and re.search(r"wall|seconds|_s$", str(key)):
        h, rem = divmod(int(round(value)), 3600)
        return f"{value:g} s ({h}:{rem // 60:02d}:{rem % 60:02d})"
    return value if isinstance(value, str) else json.dumps(value)


def _write_csv(path: Path, rows) -> None:
    names = _ordered([{"m": m} for r in rows for m in r["metrics"]], "m")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", "condition", "t_seconds", "time", "prune_ratio", "stage", "n",
                    "mean", "sem", "undefined"] + [f"{m}_{s}" for m in names for s in ("mean", "sem", "n")])
        for r in rows:
            w.writerow([r["task"], r["condition"], "" if r["t_seconds"] is None else r["t_seconds"],
                        r["time"], "" if r["prune_ratio"] is None else r["prune_ratio"],
                        r["stage"] or "", r["n"], repr(r["mean"]), repr(r["sem"]), r["undefined"]]
                       + [repr(r["metrics"][m][s]) if m in r["metrics"] else ""
                          for m in names for s in ("mean", "sem", "n")])


def build_report(out_dir, title: str = "analogformer study") -> Path:
    """Write results.json, summary.csv, plots, report.md and report.html into ``out_dir``.

    Reads ``out_dir/results.jsonl`` (falls back to ``results.json``); returns the path of
    report.md. Means/SEMs in summary.csv are on the records' [0, 1] scale.
    """
    d = Path(out_dir)
    src = d / "results.jsonl"
    if not src.is_file() and (d / "results.json").is_file():
        src = d / "results.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_records(src)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    skipped = sum("skipped record" in str(w.message) for w in caught)
    st = _Study(records)
    if src.suffix == ".jsonl":
        (d / "results.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    _write_csv(d / "summary.csv", st.rows)
    blocks = _sections(d, st, records, skipped, title)
    (d / "report.html").write_text(_html(blocks, title), encoding="utf-8")
    path = d / "report.md"
    path.write_text(_md(blocks), encoding="utf-8")
    return path
