"""Plots of the study report: metric vs time since programming, pruning stages."""
from __future__ import annotations

import textwrap

from .format import _base, _cell, _ordered, condition_label, time_label

_DPI = 150
_FIGSIZE = (8.0, 4.5)          # inches -> 1200 × 675 px at _DPI

# ----------------------------------------------------------------------------- plots
def _plot_time(path, series, style, title, ylabel):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    timed = [c for c, pts in series.items() if any(t is not None for t in pts)]
    times = sorted({t for pts in series.values() for t in pts if t is not None})
    fig, ax = plt.subplots(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    for i, c in enumerate(timed):
        pts = sorted((t, v) for t, v in series[c].items() if t is not None)
        dodge = 10 ** (0.025 * (i - (len(timed) - 1) / 2))   # keeps error bars apart
        colour, marker = style[c]
        ax.errorbar([t * dodge for t, _ in pts], [v[0] for _, v in pts],
                    yerr=[v[1] for _, v in pts], color=colour, marker=marker, ms=5,
                    capsize=3, lw=1.6, label=condition_label(c))
    for c, pts in series.items():                 # time-independent points: baselines
        if None in pts:
            mean, sem, n = pts[None][:3]
            colour = style[c][0]
            ax.axhline(mean, color=colour, ls="--", lw=1.4, label=f"{condition_label(c)} ({_cell(*pts[None])})")
            if n > 1 and sem > 0:
                ax.axhspan(mean - sem, mean + sem, color=colour, alpha=0.12, lw=0)
    ax.set_xscale("log")
    if times:
        ax.set_xticks(times, [time_label(t) for t in times])
        ax.minorticks_off()
        ax.set_xlim(times[0] / 2.5, times[-1] * 2.5)
    else:
        ax.set_xticks([])
    values = [v[0] for pts in series.values() for v in pts.values()]
    if values and min(values) > 0 and max(values) / min(values) > 10:  # e.g. perplexities 25 … 10⁴
        ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "linear" and hi - lo < 1.0:  # avoid magnifying noise below 0.1 point
        mid = (hi + lo) / 2
        ax.set_ylim(mid - 0.5, mid + 0.5)
    _finish(fig, ax, path, "Time since programming (log scale)", ylabel, title,
            "condition " + _sem_note([v[2] for pts in series.values() for t, v in pts.items() if t is not None]))


def _sem_note(ns) -> str:
    """The legend's word on error bars: a point of one device instance / seed has no SEM."""
    ns = list(ns)
    if ns and max(ns) <= 1:
        return "(1 instance each: no SEM)"
    if ns and min(ns) <= 1:
        return "(± SEM; none where n = 1)"
    return "(± SEM)"


def _plot_pruning(path, rows, baseline, title, ylabel, factor: float = 100):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scale = 100 if all(0 <= r["prune_ratio"] <= 1 for r in rows) else 1
    dense = [r for r in rows if r["stage"] == "dense"]
    rows = [r for r in rows if r["stage"] != "dense"] or dense
    keys = _ordered([dict(k=(_base(r), r["stage"], r["t_seconds"])) for r in rows], "k")
    vary = [len({k[i] for k in keys}) > 1 for i in range(3)]
    fig, ax = plt.subplots(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    for i, k in enumerate(keys):
        pts = sorted(((r["prune_ratio"], r) for r in rows
                      if (_base(r), r["stage"], r["t_seconds"]) == k), key=lambda p: p[0])
        control = k[0] == "prune-none"  # the dense model retrained: one point at ratio 0
        if dense and rows is not dense and not control:  # every curve starts at the dense model
            pts = [(0.0, dense[0])] + pts
        label = " · ".join(str(p if j != 2 else time_label(p)) for j, p in enumerate(k)
                           if vary[j] or (j == 1 and p is not None)) or k[0]
        if control:
            label = "control: dense, retrained"
        ax.errorbar([scale * x for x, _ in pts], [factor * r["mean"] for _, r in pts],
                    yerr=[factor * r["sem"] for _, r in pts], marker="osD^v<>ph*"[i % 10],
                    color=f"C{i % 10}", capsize=3, lw=1.6, label=label)
    if baseline is not None:
        ax.axhline(baseline[0], color="k", ls="--", lw=1.4, label=f"digital ({_cell(*baseline)})")
    _finish(fig, ax, path, "Prune ratio (%)" if scale == 100 else "Prune ratio", ylabel, title,
            "stage " + _sem_note([r["n"] for r in rows]))


def _finish(fig, ax, path, xlabel, ylabel, title, legend_title) -> None:
    """Labels, grid, a legend outside the axes on the right, save and close."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.suptitle(textwrap.fill(title, 95))  # over the whole figure: a long title is not cut off by the legend
    ax.grid(True, alpha=0.35)
    ax.legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
