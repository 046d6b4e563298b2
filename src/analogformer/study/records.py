"""The record log of a study: one JSON line per evaluated (task, condition, time, repeat,
prune ratio), appended and fsynced as it is produced, so a killed run loses at most the
record in flight and a re-run skips what is there."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import List, Tuple


def record_key(r: dict) -> Tuple:
    """(task, condition, t_seconds, repeat, prune_ratio): what makes a record unique."""
    t, x = r.get("t_seconds"), r.get("prune_ratio")
    return (r["task"], r["condition"], None if t is None else float(t), int(r["repeat"]),
            None if x is None else float(x))


class RecordLog:
    """Append-only JSON-lines record file; knows which records are already there."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: List[dict] = []
        if self.path.exists():
            with self.path.open() as f:
                lines = f.read().splitlines()
            for i, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    if i == len(lines):  # the write in flight when a run was killed
                        warnings.warn(f"{self.path}:{i}: skipping a truncated last record")
                        with self.path.open("w") as f:
                            f.write("".join(l + "\n" for l in lines[:i - 1] if l.strip()))
                    else:
                        raise ValueError(f"{self.path}:{i}: corrupt record in the middle of the file; "
                                         "fix or remove that line") from None
        self.done = {record_key(r) for r in self.records}

    def has(self, key: Tuple) -> bool:
        """`key` as record_key; a 4-tuple (no prune ratio) means prune_ratio None."""
        return (tuple(key) + (None,) * (5 - len(key))) in self.done

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(record_key(record))
