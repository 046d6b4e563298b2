"""Report: exact summary statistics, table text, GLUE completeness, files, errors."""
import json
import math
import re
import warnings

import numpy as np
import pytest

from analogformer.report import build_report, load_records, summarize, time_label

T = [1.0, 3600.0, 86400.0, 604800.0, 2592000.0]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rec(task, cond, t, rep, value, **extra):
    metrics = extra.pop("metrics", {"accuracy": value})
    return dict(task=task, condition=cond, t_seconds=t, repeat=rep, metrics=metrics,
                headline=value, **extra)


def write(d, records, tail=""):
    with open(d / "results.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
        fh.write(tail)


def study(tmp_path):
    """sst2 (all points) + rte (analog lacks 1 mo); digital baseline on both."""
    recs = [rec(task, "digital", None, i, v) for task in ("sst2", "rte") for i, v in
            enumerate([0.91, 0.92])]
    for k, t in enumerate(T):
        for i, dv in enumerate([-0.01, 0.0, 0.01]):        # mean a, SEM 0.01/√3 exactly
            recs.append(rec("sst2", "analog", t, i, 0.90 - 0.01 * k + dv))
            recs.append(rec("sst2", "hwa", t, i, 0.91 + dv))
            recs.append(rec("rte", "hwa", t, i, 0.70 + dv))
            if t != T[-1]:
                recs.append(rec("rte", "analog", t, i, 0.65 + dv))
    write(tmp_path, recs)
    return recs


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def table(md, heading):
    """Rows (lists of cells) of the first Markdown table after a heading line."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[0], rows[2:]


def test_summarize_exact_mean_sem_n():
    recs = [rec("sst2", "analog", 3600.0, i, v,
                metrics={"accuracy": v, "f1": f}) for i, (v, f) in
            enumerate([(0.80, 0.5), (0.90, 0.6), (0.85, 0.7), (0.95, 0.8)])]
    recs.append(rec("sst2", "digital", None, 0, 0.93))
    rows = summarize(recs)
    assert [(r["condition"], r["t_seconds"], r["n"]) for r in rows] == [
        ("analog", 3600.0, 4), ("digital", None, 1)]
    a = rows[0]
    values = np.array([0.80, 0.90, 0.85, 0.95])
    assert a["mean"] == pytest.approx(0.875, abs=1e-12)
    # hand: deviations ±0.075, ±0.025 -> s² = (2·0.075² + 2·0.025²)/3 = 0.0041667
    assert a["sem"] == pytest.approx(math.sqrt(0.0125 / 3) / 2, abs=1e-12)
    assert a["sem"] == pytest.approx(values.std(ddof=1) / 2, abs=1e-12)
    assert a["metrics"]["f1"]["mean"] == pytest.approx(0.65, abs=1e-12)
    assert a["metrics"]["f1"]["sem"] == pytest.approx(np.std([.5, .6, .7, .8], ddof=1) / 2)
    assert a["time"] == "1 h"
    assert rows[1]["sem"] == 0.0 and rows[1]["mean"] == pytest.approx(0.93)


def test_time_labels():
    assert [time_label(t) for t in T] == ["1 s", "1 h", "1 d", "1 w", "1 mo"]
    assert time_label(None) == "—"
    assert time_label(5400) == "90 min"
    assert time_label(864000) == "10 d"
    assert time_label(31_536_000) == "1 y"
    assert time_label(0.5) == "0.5 s"


def test_headline_table_cells_and_glue_average_complete_points(tmp_path):
    study(tmp_path)
    md = build_report(tmp_path).read_text()
    header, rows = table(md, "### SST-2")
    assert header == ["condition", "t-indep.", "1 s", "1 h", "1 d", "1 w", "1 mo"]
    by = {r[0]: r[1:] for r in rows}
    sem = f"{100 * 0.01 / math.sqrt(3):.2f}"                     # 0.58
    assert by["analog"][1:] == [f"{v:.2f} ± {sem}" for v in (90, 89, 88, 87, 86)]
    assert by["digital"][0] == "91.50 ± 0.50"
    # GLUE average: analog at 1 mo is missing on RTE -> no cell; hwa present everywhere.
    header, rows = table(md, "## GLUE average")
    by = {r[0]: r[1:] for r in rows}
    sem_avg = f"{math.sqrt(2) * 100 * 0.01 / math.sqrt(3) / 2:.2f}"
    assert by["analog"][1] == f"77.50 ± {sem_avg}"              # (90 + 65) / 2
    assert by["analog"][-1] == ""
    assert by["hwa"][-1] == f"80.50 ± {sem_avg}"
    assert by["digital"][0] == f"91.50 ± {math.sqrt(2) * 0.5 / 2:.2f}"
    assert "over SST-2, RTE" in md
    # Drop vs digital: analog's last point is 1 mo, where RTE has nothing.
    header, rows = table(md, "## Drop vs digital")
    assert header == ["condition", "at", "SST-2", "RTE", "GLUE avg"]
    by = {r[0]: r[1:] for r in rows}
    assert by["analog"][0] == "1 mo" and by["analog"][2:] == ["n/a", "n/a"]
    assert by["analog"][1] == f"+5.50 ± {math.hypot(0.5, 100 * 0.01 / math.sqrt(3)):.2f}"
    sem_glue = math.sqrt(2) * 100 * 0.01 / math.sqrt(3) / 2
    assert by["hwa"][3] == f"+11.00 ± {math.hypot(math.sqrt(2) * 0.5 / 2, sem_glue):.2f}"


def test_files_pngs_and_html(tmp_path):
    import matplotlib.image as mpimg
    recs = study(tmp_path)
    (tmp_path / "config.yaml").write_text("model: minilm\nrepeats: 3\n")
    (tmp_path / "environment.json").write_text(json.dumps({"torch": "2.13", "threads": 2}))
    (tmp_path / "energy.md").write_text("| precision | energy |\n|---|---|\n| INT6 | 0.088 |\n")
    import matplotlib.pyplot as plt
    plt.imsave(tmp_path / "tiles.png", np.zeros((20, 30)))
    plt.imsave(tmp_path / "delta.png", np.ones((10, 10)))
    (tmp_path / "artifacts.json").write_text(json.dumps({"Δ matrix": "delta.png", "gone": "x.png"}))
    with pytest.warns(UserWarning, match="x.png"):
        path = build_report(tmp_path, title="Demo study")
    md = path.read_text()
    assert "## Tile mapping\n\n![tile mapping](tiles.png)" in md
    assert "## Other figures\n\n### Δ matrix\n\n![Δ matrix](delta.png)" in md and "x.png" not in md
    assert path == tmp_path / "report.md" and md.startswith("# Demo study\n")
    for section in ("## Headline metric vs time", "## GLUE average", "## Drop vs digital",
                    "## Plots", "## Attention energy", "## Configuration", "## Environment"):
        assert section in md
    assert "## Pruning" not in md
    assert "```yaml\nmodel: minilm\nrepeats: 3\n```" in md
    assert "| torch | 2.13 |" in md
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert linked == ["metric_vs_time_sst2.png", "metric_vs_time_rte.png",
                      "glue_average_vs_time.png", "tiles.png", "delta.png"]
    for name in linked[:3]:
        assert png_size(tmp_path / name) == (1200, 675)
        assert mpimg.imread(tmp_path / name).shape[:2] == (675, 1200)
    assert json.loads((tmp_path / "results.json").read_text()) == [
        {**r, "prune_ratio": None, "stage": None} for r in recs]
    csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,condition,t_seconds,time,prune_ratio,stage,n,mean,sem")
    assert len(csv_lines) == 1 + 2 + 2 * 5 + 5 + 4     # digital ×2, sst2 analog/hwa, rte
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == len(re.findall(r"^\|-", md, re.M)) == 6
    assert "<td>91.50 ± 0.50</td>" in page and '<img src="glue_average_vs_time.png"' in page
    assert "<h1>Demo study</h1>" in page and "<td>INT6</td>" in page.replace(' class="l"', "")


def test_truncated_last_line_skipped_with_warning(tmp_path):
    write(tmp_path, [rec("sst2", "analog", 1.0, 0, 0.9), rec("sst2", "analog", 1.0, 1, 0.8)],
          tail='{"task": "sst2", "condition": "ana')
    with pytest.warns(UserWarning, match=r"results.jsonl:3: skipped"):
        records = load_records(tmp_path / "results.jsonl")
    assert [r["headline"] for r in records] == [0.9, 0.8]
    with pytest.warns(UserWarning, match="skipped"):
        md = build_report(tmp_path).read_text()
    assert "1 unreadable line(s)" in md
    # one task, one time point, no digital: tables still have the known cell
    header, rows = table(md, "### SST-2")
    assert header == ["condition", "1 s"] and rows == [["analog", "85.00 ± 5.00"]]
    assert "## GLUE average" not in md and "no `digital` baseline" in md
    assert png_size(tmp_path / "metric_vs_time_sst2.png") == (1200, 675)


def test_pruning_and_unknown_task(tmp_path):
    recs = [rec("mytask", "prune:dense", None, i, 0.80 + 0.01 * i, prune_ratio=0.0, stage="dense")
            for i in range(2)]
    for method, x, after, retr in [("mac-rows", 0.25, 0.70, 0.78), ("random-rows", 0.25, 0.60, 0.74),
                                   ("mac-rows", 0.5, 0.50, 0.76)]:
        recs += [rec("mytask", f"prune-{method}:pruned", None, 0, after, prune_ratio=x, stage="pruned"),
                 rec("mytask", f"prune-{method}:retrained", None, 0, retr, prune_ratio=x, stage="retrained")]
    recs.append(rec("mytask", "digital", None, 0, 0.81))
    recs.append(rec("mytask", "pruned@0.25", 2592000.0, 0, 0.75))
    write(tmp_path, recs)
    md = build_report(tmp_path).read_text()
    header, rows = table(md, "## Pruning")
    assert header == ["method", "prune ratio", "dense", "after pruning", "after retraining",
                      "retrained − dense"]
    assert rows == [["mac-rows", "0.25", "80.50 ± 0.50", "70.00", "78.00", "-2.50 ± 0.50"],
                    ["random-rows", "0.25", "80.50 ± 0.50", "60.00", "74.00", "-6.50 ± 0.50"],
                    ["mac-rows", "0.5", "80.50 ± 0.50", "50.00", "76.00", "-4.50 ± 0.50"]]
    # the pruned model on tiles is a timed condition of the headline table
    header, rows = table(md, "### mytask")
    assert rows[-1][0] == "pruned@0.25" and rows[-1][-1] == "75.00"
    assert "### mytask" in md and "(pruning_mytask.png)" in md
    assert png_size(tmp_path / "pruning_mytask.png") == (1200, 675)


def test_missing_or_empty_results_error(tmp_path):
    with pytest.raises(ValueError, match=r"results.jsonl does not exist.*analogformer study"):
        build_report(tmp_path)
    (tmp_path / "results.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"results.jsonl holds no valid records.*analogformer study"):
        build_report(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"task": "sst2"}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no valid records"):
            load_records(tmp_path / "results.jsonl")


def test_glue_average_counts_mnli_once(tmp_path):
    values = {"mnli-m": 0.80, "mnli-mm": 0.90, "sst2": 0.60}
    write(tmp_path, [rec(t, "analog", 1.0, 0, v) for t, v in values.items()])
    md = build_report(tmp_path).read_text()
    header, rows = table(md, "## GLUE average")
    assert rows == [["analog", "72.50"]]                 # ((80 + 90) / 2 + 60) / 2
    assert "MNLI-m and MNLI-mm count once" in md
