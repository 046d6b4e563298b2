"""The report section of generated texts (`generations.jsonl` of a study with `generation:`):
per task and prompt, one row per condition and time — digital first, then each condition
over time — so the texts read side by side."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from .format import _ordered, _tkey, condition_label, time_label

__all__ = ["generations_section"]

_MAX_CHARS = 400


def _load(path: Path) -> list[dict]:
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: unreadable line skipped")
    return out


def _one_line(text: str) -> str:
    """A table cell: line breaks shown as ↵, backticks kept literal, long texts cut."""
    text = text.replace("\r\n", "\n").replace("\n", " ↵ ").replace("`", "'")
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + " …"


def generations_section(d: Path, task_name=lambda t: t) -> list[tuple]:
    """Report blocks of `d/generations.jsonl` (nothing when the file is absent or empty)."""
    path = Path(d) / "generations.jsonl"
    if not path.is_file():
        return []
    recs = _load(path)
    if not recs:
        return []
    modes = sorted({r.get("mode", "?") for r in recs})
    B = [("h", 2, "Generated text"),
         ("p", f"Each prompt continued ({', '.join(modes)}) by every condition at each time point, on device "
               "instance 0 (the sweep's repeat 0); the prompt is not repeated in the text, ↵ marks a line break. "
               "All texts are in `generations.jsonl`.")]
    for task in _ordered(recs, "task"):
        rt = [r for r in recs if r["task"] == task]
        for prompt in _ordered(rt, "prompt"):
            rows = [r for r in rt if r["prompt"] == prompt]
            order = {c: i for i, c in enumerate(_ordered(rows, "condition"))}
            rows.sort(key=lambda r: (r["t_seconds"] is not None, order[r["condition"]], _tkey(r["t_seconds"])))
            B += [("h", 3, f"{task_name(task)} — “{_one_line(prompt)}”"),
                  ("table", ["condition", "time", "text"],
                   [[condition_label(r["condition"]), "—" if r["t_seconds"] is None else time_label(r["t_seconds"]),
                     _one_line(r["text"]) or "(nothing: end of text at once)"] for r in rows])]
    return B
