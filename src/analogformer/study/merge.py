"""Merge study folders that ran parts of one study (e.g. one task per process) into one.

The sources must hold the same config except for what a study may grow (`tasks`,
`conditions`, time points, repeats; see `study.EXTENDABLE`): the merged config takes
their union. Records are united by `record_key`; a key present in several sources must
carry the same metrics (the runs are seeded record by record, so the same config gives the
same record), otherwise nothing is written. Checkpoints are hard-linked (copied where
links are impossible), top-level files (figures, tables) copied; the first source wins
where two hold the same file. A source given twice, or the output among the sources, is
refused; the sources' lock files are not copied, and `environment.json` holds each source's
environment (the machines and versions that made its records).
The report is rebuilt at the end, and the merged folder resumes like any study folder.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

from ..report import build_report
from .config import EXTENDABLE, config_changes
from .records import RecordLog, record_key

# what a resumed study may add to, plus per-condition time subsets (which follow conditions)
_GROWABLE = tuple(tuple(k.split(".")) for k in EXTENDABLE) + (("sweep", "times_per_condition"),)
_REBUILT = {"results.jsonl", "config.yaml", "results.json", "summary.csv", "report.md",
            "report.html", "artifacts.json", "environment.json", ".lock"}


def _pop(cfg: dict, path) -> object:
    node = cfg
    for p in path[:-1]:
        node = node.get(p) or {}
    return node.pop(path[-1], None) if isinstance(node, dict) else None


def _union(values: List) -> object:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if all(isinstance(v, list) for v in values):
        out = []
        for v in values:
            out += [x for x in v if x not in out]
        return out
    if all(isinstance(v, dict) for v in values):
        out = {}
        for v in values:
            for k, x in v.items():
                out[k] = _union([out[k], x]) if k in out and isinstance(x, list) else out.get(k, x)
        return out
    return max(values)


def _merged_config(sources: Sequence[Path]) -> dict:
    configs = []
    for s in sources:
        path = s / "config.yaml"
        if not path.is_file():
            raise ValueError(f"{s} is not a study folder: config.yaml is missing")
        configs.append(yaml.safe_load(path.read_text()) or {})
    grown = {p: _union([_pop(c, p) for c in configs]) for p in _GROWABLE}
    for s, c in zip(sources[1:], configs[1:]):
        changes = config_changes(configs[0], c) + [
            k + ": only in " + str(s) for k in c if k not in configs[0]]
        if changes:
            raise ValueError(f"{s} ran a different study than {sources[0]} (differs in: "
                             f"{changes[:5]}); only tasks, conditions, time points and repeats "
                             "may differ between merged folders")
    merged = configs[0]
    for path, value in grown.items():
        if value is not None:
            node = merged
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = value
    return merged


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) every file of `src` under `dst`, keeping files `dst` has."""
    for f in src.rglob("*"):
        if not f.is_file():
            continue
        target = dst / f.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def merge_studies(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Merge the study folders `sources` into `out` (new or empty); returns report.md."""
    sources = [Path(s) for s in sources]
    out = Path(out)
    if len(sources) < 2:
        raise ValueError("merge needs at least two study folders")
    seen: Dict[Path, Path] = {}
    for s in sources:
        real = s.resolve()
        if real in seen:
            raise ValueError(f"merge was given the study folder {real} more than once (as {seen[real]} and "
                             f"{s}); name each folder once")
        seen[real] = s
    if out.resolve() in seen:
        raise ValueError(f"--out {out} is one of the folders being merged; merge writes a new folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: merge writes a new folder (choose another --out)")
    config = _merged_config(sources)
    records: Dict[tuple, dict] = {}
    origin: Dict[tuple, Path] = {}
    for s in sources:
        for r in RecordLog(s / "results.jsonl", repair=False).records:
            k = record_key(r)
            if k in records and records[k].get("metrics") != r.get("metrics"):
                raise ValueError(f"record {k} differs between {origin[k]} and {s} "
                                 f"({records[k].get('metrics')} vs {r.get('metrics')}): these "
                                 "folders did not run the same study; nothing was written")
            records.setdefault(k, r)
            origin.setdefault(k, s)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with (out / "results.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records.values())
    artifacts: Dict[str, str] = {}
    for s in sources:
        for f in s.iterdir():
            if f.is_dir():
                _link_tree(f, out / f.name)
            elif f.name not in _REBUILT and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)  # a copy: report plots are rewritten in place
        arts = s / "artifacts.json"
        if arts.is_file():
            for title, name in json.loads(arts.read_text()).items():
                artifacts.setdefault(title, name)
    if artifacts:
        (out / "artifacts.json").write_text(json.dumps(artifacts, indent=1))
    envs = {f"environment of {s}": json.loads((s / "environment.json").read_text(encoding="utf-8"))
            for s in sources if (s / "environment.json").is_file()}
    if envs:
        (out / "environment.json").write_text(json.dumps(
            {"merged from": ", ".join(map(str, sources)), **envs}, indent=1))
    return build_report(out)
