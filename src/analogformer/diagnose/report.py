"""A diagnosis as a Markdown table per time point and a bar chart (diagnosis.md, .png).

Scores in [-1, 1] where higher is better (accuracy, correlations) are shown ×100 ("points"), as
in the study report; other headlines (a loss, a perplexity) as they are, to 4 significant digits. Every Δ is a plain difference of means;
the chart shows each non-ideality's cost with the task's direction honoured (> 0 = it hurts)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

from ..report.format import time_label
from .run import Diagnosis

_DPI = 150  # as the study report's plots


def config_summary(cfg) -> str:
    """One line on an AnalogConfig: periphery, devices, tiles, compensation."""
    dac, adc, pcm, tile = cfg.dac, cfg.adc, cfg.pcm, cfg.tile
    parts = [f"DAC {dac.bits} bit ({dac.input_scaling} range)" if dac.bits else "DAC off",
             f"ADC {adc.bits} bit ±{adc.bound:g}" + (f" ({adc.bound_management} bound management)"
                                                      if adc.bound_management else "") if adc.bits else "ADC off",
             f"output noise {adc.output_noise_std:g}" if adc.output_noise_std else "no output noise",
             "PCM " + ", ".join(n for n, on in (("programming noise", pcm.prog_noise), ("drift", pcm.drift),
                                                ("read noise", pcm.read_noise)) if on) + f" (γ = {pcm.gamma:g})",
             f"{tile.rows}×{tile.cols} tiles, per-{tile.weight_scale} scale",
             "drift compensation per " + cfg.compensation.granularity if cfg.compensation.enabled else "no compensation"]
    return "; ".join(parts)


def _scale(diag: Diagnosis) -> float:
    """100 (points) for a score where higher is better and every value lies in [-1, 1] (accuracy,
    F1, a correlation); 1 otherwise (a loss, a perplexity, an error)."""
    vals = [r["headline"] for r in diag.records if r["headline"] is not None]
    return 100.0 if diag.higher_is_better and vals and all(-1.0 <= v <= 1.0 for v in vals) else 1.0


def _fmt(x: float, scale: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    v = x * scale
    spec = ".2f" if scale == 100.0 else ".4g"  # points as in the study report; a loss / perplexity: 4 digits
    return format(v, ("+" if signed else "") + spec)


def _cell(stats, scale: float, signed: bool = False) -> str:
    mean, sem, n = stats
    if n == 0:
        return "n/a"
    return _fmt(mean, scale, signed) + (f" ± {_fmt(sem, scale)}" if n > 1 else "") + f" ({n})"


def panel_times(diag: Diagnosis) -> Sequence[Optional[float]]:
    """The time points that tell rows apart: the diagnosis's, or (None,) when no row changes with time."""
    return diag.times if any(r.timed for r in diag.rows) else (None,)


def ordered_rows(diag: Diagnosis, t: Optional[float]) -> List[str]:
    """digital, ideal tiles, all on, then per non-ideality (most costly first) "all but N", "only N"."""
    names = ["digital", "ideal tiles", "all on"]
    for d in diag.attribution(t):
        names += [n for n in (d["removed"], d["only"]) if n is not None]
    return names


def _headline_words(diag: Diagnosis, scale: float, metric: str) -> str:
    unit = " in points (×100)" if scale == 100.0 else ""
    better = "higher" if diag.higher_is_better else "lower"
    return (f"Headline: {metric} ({better} is better){unit}. A cell is the mean ± SEM (n device instances); "
            f"digital and ideal tiles are deterministic (n = 1). Δ = row − reference: {better} is better, so "
            f"a Δ vs all on {'above' if diag.higher_is_better else 'below'} 0 means the row does better "
            "than the full config.")


def _ranking_line(diag: Diagnosis, t, scale: float) -> str:
    parts = []
    for d in diag.attribution(t):
        if d["choice"]:
            continue
        mean, sem, n = d["gain_removed"]
        parts.append(f"{d['label']} ({_fmt(mean, scale, True)}" + (f" ± {_fmt(sem, scale)})" if n > 1 else ")"))
    return ("Gain of switching one non-ideality off (all but N vs all on; > 0 = it hurts), largest first: "
            + ", ".join(parts) + "." if parts else "")


def render_markdown(diag: Diagnosis, title: str = "Diagnosis", notes: Sequence[str] = (),
                    metric: str = "headline", image: Optional[str] = None) -> str:
    """The report text: `notes` (what was diagnosed), then per time point the ranking and the table."""
    scale = _scale(diag)
    lines = [f"# {title}", ""] + [f"{n}  " for n in notes] + ["", _headline_words(diag, scale, metric), ""]
    timeless = any(r.programmed and not r.timed for r in diag.rows)
    digital, ideal = diag.stats("digital", None)[0], diag.stats("ideal tiles", None)[0]
    if digital == ideal:
        lines += ["Ideal tiles (every non-ideality off) give exactly the digital headline, as they must.", ""]
    elif math.isfinite(digital) or math.isfinite(ideal):
        lines += [f"**Ideal tiles differ from digital by {_fmt(ideal - digital, scale, True)}**: with every "
                  "non-ideality off the tiles should compute exactly what nn.Linear does; report this.", ""]
    for t in panel_times(diag):
        lines += [f"## {'At ' + time_label(t) + ' after programming' if t is not None else 'Every time point'}", ""]
        rank = _ranking_line(diag, t, scale)
        if rank:
            lines += [rank, ""]
        lines += ["| row | headline ± SEM (n) | Δ vs all on | Δ vs digital |", "|---|---:|---:|---:|"]
        all_on, digital = diag.stats("all on", t)[0], diag.stats("digital", t)[0]
        for name in ordered_rows(diag, t):
            mean = diag.stats(name, t)[0]
            mark = " †" if t is not None and diag.row(name).programmed and not diag.row(name).timed else ""
            lines.append(f"| {name}{mark} | {_cell(diag.stats(name, t), scale)} | {_fmt(mean - all_on, scale, True)} "
                         f"| {_fmt(mean - digital, scale, True)} |")
        lines.append("")
    if timeless and any(t is not None for t in panel_times(diag)):
        lines += ["† nothing in this row changes with time (no drift, no read noise): measured once, at t = 0.", ""]
    if image:
        lines += [f"![cost of each non-ideality]({image})", "",
                  "Bars: what each non-ideality costs, measured two ways: alone (how much worse \"only N\" is "
                  "than ideal tiles) and in the full config (how much better \"all but N\" — for a choice, the "
                  "other choice — is than all on); > 0 = it hurts; error bars: SEM.", ""]
    return "\n".join(lines)


def plot_attribution(diag: Diagnosis, path: Path, title: str = "Diagnosis") -> Path:
    """Horizontal bars per non-ideality and time point: its cost alone and the gain of
    switching it off (for a choice: of the other choice), error bars = SEM."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = _scale(diag)
    times = panel_times(diag)
    order = [d["effect"] for d in diag.attribution(times[-1])]  # every panel: the last time's ranking
    fig, axes = plt.subplots(1, len(times), figsize=(4.5 * len(times) + 1.5, 1.2 + 0.55 * max(1, len(order))),
                             dpi=_DPI, layout="constrained", sharey=True, squeeze=False)
    for ax, t in zip(axes[0], times):
        by_effect = {d["effect"]: d for d in diag.attribution(t)}
        att = [by_effect[e] for e in order]
        y = range(len(att))
        for off, key, colour, label in ((-0.2, "cost_alone", "C0", "alone: only N vs ideal tiles"),
                                        (0.2, "gain_removed", "C3", "switched off: all but N vs all on")):
            vals = [(d[key] or (math.nan, 0.0, 0)) for d in att]
            ax.barh([i + off for i in y], [v[0] * scale for v in vals], height=0.38, color=colour, label=label,
                    xerr=[(v[1] if v[2] > 1 else 0.0) * scale for v in vals], capsize=3)
        ax.set_yticks(list(y), [d["label"] + (" (other choice)" if d["choice"] else "") for d in att])
        ax.axvline(0.0, color="k", lw=0.8)
        ax.grid(True, axis="x", alpha=0.35)
        ax.set_title(time_label(t) if t is not None else "any time")
        ax.set_xlabel("cost" + (" (points)" if scale == 100.0 else "") + "; > 0 = it hurts")
    axes[0][0].invert_yaxis()  # most costly on top (the axes share y: invert once)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return Path(path)


def write_report(diag: Diagnosis, out_dir: Path, title: str = "Diagnosis", notes: Sequence[str] = (),
                 metric: str = "headline") -> str:
    """Write out_dir/diagnosis.md and out_dir/diagnosis.png; returns the Markdown text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_attribution(diag, out_dir / "diagnosis.png", title)
    text = render_markdown(diag, title, notes, metric, image="diagnosis.png")
    (out_dir / "diagnosis.md").write_text(text)
    return text
