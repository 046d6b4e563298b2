"""A sensitivity analysis as Markdown (ranked tables, weight statistics, rank correlations,
mixed mapping) and PNGs: the heat-map (layer type × transformer layer, one panel per mode) and
the mixed-mapping trade-off (metric and tiles vs k)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..report.format import time_label
from .modes import MODES
from .run import Sensitivity

_DPI = 150


def _scale(s: Sensitivity) -> float:
    """100 (points) for a higher-is-better score in [-1, 1] (accuracy, F1); 1 otherwise (a loss)."""
    vals = [r["headline"] for r in s.records if r["headline"] is not None and math.isfinite(r["headline"])]
    return 100.0 if s.higher_is_better and vals and all(-1 <= v <= 1 for v in vals) else 1.0


def _fmt(x: float, scale: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return format(x * scale, ("+" if signed else "") + (".2f" if scale == 100.0 else ".4g"))


def _cell(st, scale, signed=False) -> str:
    mean, sem, n = st
    if n == 0:
        return "n/a"
    return _fmt(mean, scale, signed) + (f" ± {_fmt(sem, scale)}" if n > 1 else "") + f" ({n})"


def mode_words(s: Sensitivity, mode: str) -> str:
    m = MODES[mode]
    what = m.describe.replace("std", f"std = {s.std:g}") if m.uses_std else m.describe
    return what + (f", t = {time_label(s.t_seconds)} after programming" if mode == "tiles" else "")


def _columns(s: Sensitivity) -> List[str]:
    blocks = sorted({l.column for l in s.layers if l.column not in ("in", "out")}, key=int)
    return [c for c in ["in"] + blocks + ["out"] if any(l.column == c for l in s.layers)]


def _types(s: Sensitivity) -> List[str]:
    out: List[str] = []
    for order in (lambda l: l.column not in ("in", "out"), lambda l: l.column == "in", lambda l: l.column == "out"):
        for l in s.layers:
            if order(l) and l.type not in out:
                out.append(l.type)
    return out


def plot_heatmap(s: Sensitivity, path: Path, title: str) -> Optional[Path]:
    """Drop (digital − noisy; > 0 = hurts) per layer type × transformer layer, one panel per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in s.modes if s.measured(m)]
    if not modes:
        return None
    scale, cols, types = _scale(s), _columns(s), _types(s)
    fig, axes = plt.subplots(1, len(modes), figsize=(1.6 + (0.55 * len(cols) + 3.2) * len(modes), 1.4 + 0.32 * len(types)),
                             dpi=_DPI, layout="constrained", squeeze=False)
    for ax, mode in zip(axes[0], modes):
        grid = np.full((len(types), len(cols)), np.nan)
        for l in s.layers:
            d = s.drop(mode, l.name)
            if d[2]:
                grid[types.index(l.type), cols.index(l.column)] = d[0] * scale
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}" if scale == 100.0 else f"{v:.2g}", ha="center", va="center", fontsize=6.5,
                        color="white" if abs(v) > 0.6 * lim else "black")
        ax.set_xticks(range(len(cols)), ["emb." if c == "in" else "head" if c == "out" else c for c in cols])
        ax.set_yticks(range(len(types)), types if ax is axes[0][0] else [""] * len(types), fontsize=7)
        ax.set_xlabel("transformer layer")
        ax.set_title(MODES[mode].label + (f", std {s.std:g}" if MODES[mode].uses_std else f", {time_label(s.t_seconds)}"),
                     fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="drop" + (" (points)" if scale == 100.0 else "") + "; > 0 = hurts")
    fig.suptitle(title)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return Path(path)


def plot_mixed(s: Sensitivity, rows: Sequence[dict], path: Path, title: str) -> Path:
    """Metric (± SEM) and tiles vs k (the k most sensitive matrices kept digital)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = _scale(s)
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=_DPI, layout="constrained")
    ks = [r["k"] for r in rows]
    ax.errorbar(ks, [r["headline"][0] * scale for r in rows], yerr=[r["headline"][1] * scale for r in rows],
                marker="o", capsize=3, color="C0", label=f"on tiles at {time_label(s.t_seconds)}")
    ax.axhline(s.digital * scale, color="k", ls="--", lw=1.2, label="digital")
    ax.set_xlabel("k most sensitive matrices kept digital")
    ax.set_ylabel("headline" + (" (points)" if scale == 100.0 else ""), color="C0")
    ax2 = ax.twinx()
    ax2.step(ks, [r["tiles"] for r in rows], where="mid", color="C3", lw=1.5, label="tiles")
    ax2.set_ylabel("tiles used", color="C3")
    ax2.set_ylim(0, max(r["tiles"] for r in rows) * 1.1 + 1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", frameon=False)
    ax.grid(True, alpha=0.35)
    ax.set_title(title)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return Path(path)


def _claims(s: Sensitivity, mode: str) -> List[str]:
    """Seed 004's claims, checked against the ranking in `mode`."""
    rank = s.ranking(mode)
    if not rank:
        return []
    pos = {n: i + 1 for i, n in enumerate(rank)}
    by = {l.name: l for l in s.layers if l.name in pos}
    blocks = sorted({int(l.column) for l in by.values() if l.column not in ("in", "out")})
    groups = {"embeddings": [n for n, l in by.items() if l.kind == "embedding"],
              "first transformer layer": [n for n, l in by.items() if blocks and l.column == str(blocks[0])],
              "last transformer layer": [n for n, l in by.items() if blocks and l.column == str(blocks[-1])],
              "output head / pooler": [n for n, l in by.items() if l.column == "out"]}
    out = []
    for g, names in groups.items():
        if names:
            ranks = sorted(pos[n] for n in names)
            out.append(f"{g}: ranks {', '.join(map(str, ranks))} of {len(rank)} (median {np.median(ranks):g})")
    return out


def render_markdown(s: Sensitivity, title: str, notes: Sequence[str] = (), metric: str = "headline",
                    mixed: Sequence[dict] = (), images: Sequence[str] = ()) -> str:
    scale = _scale(s)
    better = "higher" if s.higher_is_better else "lower"
    lines = [f"# {title}", ""] + [f"{n}  " for n in notes] + [
        "", f"Headline: {metric} ({better} is better){' in points (×100)' if scale == 100.0 else ''}; "
        f"digital: **{_fmt(s.digital, scale)}**. Drop = digital − noisy ({'noisy − digital' if not s.higher_is_better else ''}"
        f"{'; ' if not s.higher_is_better else ''}> 0 = the noise hurts), mean ± SEM over n device instances / noise draws.", ""]
    if images:
        lines += [f"![sensitivity heat-map]({images[0]})", ""]
    for mode in s.modes:
        rank = s.ranking(mode)
        if not rank:
            continue
        lines += [f"## {MODES[mode].label}", "", mode_words(s, mode) + ".", ""]
        claims = _claims(s, mode)
        if claims:
            lines += ["Where the seed's \"most vulnerable\" layers rank (1 = most sensitive): " + "; ".join(claims) + ".", ""]
        corr = s.correlations(mode)
        lines += ["Spearman rank correlation of the drop with each weight statistic (the seed: \"susceptible "
                  "layers have a wider distribution\"): " + ", ".join(
                      f"{k} ρ = {v[0]:+.2f} (p = {v[1]:.2g}, n = {v[2]})" if math.isfinite(v[0]) else f"{k}: n/a"
                      for k, v in corr.items()) + ".", ""]
        lines += ["| rank | layer | kind | metric ± SEM (n) | drop | std | kurtosis | max/rms |",
                  "|---:|---|---|---:|---:|---:|---:|---:|"]
        kinds = {l.name: l.kind for l in s.layers}
        for i, name in enumerate(rank, 1):
            w = s.weights.get(name, {})
            lines.append(f"| {i} | `{name}` | {kinds[name]} | {_cell(s.stats(mode, name), scale)} | "
                         f"{_fmt(s.drop(mode, name)[0], scale, True)} | {w.get('std', math.nan):.4g} | "
                         f"{w.get('kurtosis', math.nan):.3g} | {w.get('max_over_rms', math.nan):.3g} |")
        lines.append("")
    if mixed:
        lines += ["## Mixed mapping: the k most sensitive matrices kept digital", "",
                  f"On tiles at {time_label(s.t_seconds)} (the study's tile model, compensation as configured), "
                  "the k analog matrices that rank first kept digital (`AnalogConfig.exclude` below); tiles from "
                  "`hardware.mapping`.", "",
                  "| k | metric ± SEM (n) | Δ vs k = 0 | tiles | tiles saved | analog weights | newly digital |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        base = mixed[0]["headline"][0]
        prev: List[str] = []
        for r in mixed:
            new = [n for n in r["excluded"] if n not in prev]
            prev = r["excluded"]
            lines.append(f"| {r['k']} | {_cell(r['headline'], scale)} | {_fmt(r['headline'][0] - base, scale, True)} | "
                         f"{r['tiles']} | {r['tiles_saved']} | {r['weights']:,} | "
                         + (", ".join(f"`{n}`" for n in new[:4]) + (" …" if len(new) > 4 else "")) + " |")
        last = mixed[-1]
        lines += ["", "`analog.exclude` entries to append for the largest k:", "", "```yaml",
                  "exclude:"] + [f"  - '{e}'" for e in last["exclude"]] + ["```", ""]
        if len(images) > 1:
            lines += [f"![mixed mapping]({images[1]})", ""]
    return "\n".join(lines)


def write_report(s: Sensitivity, out_dir: Path, title: str = "Sensitivity", notes: Sequence[str] = (),
                 metric: str = "headline", mixed: Sequence[dict] = ()) -> str:
    """Write out_dir/sensitivity.md, sensitivity.png (heat-map) and, with `mixed`, mixed_mapping.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    if plot_heatmap(s, out_dir / "sensitivity.png", title):
        images.append("sensitivity.png")
    if mixed:
        plot_mixed(s, mixed, out_dir / "mixed_mapping.png", f"{title}: mixed mapping")
        images.append("mixed_mapping.png")
    text = render_markdown(s, title, notes, metric, mixed, images)
    (out_dir / "sensitivity.md").write_text(text)
    return text
