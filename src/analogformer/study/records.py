"""The record log of a study: one JSON line per evaluated (task, condition, time, repeat,
prune ratio), appended and fsynced as it is produced, so a killed run loses at most the
record in flight and a re-run skips what is there.

A key is written once: the log refuses a record whose key it holds, and a file holding one
key twice (two runs on one folder with an older version) is an error naming the lines —
a duplicate would inflate n and shrink the standard error. A metric that is undefined
(a correlation of constant predictions) is stored as null, never as NaN; an infinite value
is refused."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import List, Tuple


def record_key(r: dict) -> Tuple:
    """(task, condition, t_seconds, repeat, prune_ratio): what makes a record unique."""
    t, x = r.get("t_seconds"), r.get("prune_ratio")
    return (r["task"], r["condition"], None if t is None else float(t), int(r["repeat"]),
            None if x is None else float(x))


class JsonLinesLog:
    """Append-only JSON-lines file, one record per line, fsynced as written; knows which keys
    (`key(record)`) it holds and writes each key once. Subclasses name the key and the words of
    their messages."""

    noun = "record"          # what a line is called in messages
    ensure_ascii = True      # json.dumps' choice for the lines written

    def __init__(self, path: Path, repair: bool = True):
        """Load `path` if it exists. A truncated last line (the write in flight when a run
        was killed) is skipped, and with `repair` (the run that owns the folder) the file
        is rewritten without it — atomically, through a temporary file; readers of another
        study's folder (`merge`) pass `repair=False` and leave it untouched."""
        self.path = Path(path)
        self.records: List[dict] = []
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines):
                    raise ValueError(f"{self.path}:{i}: corrupt {self.noun} in the middle of the file; "
                                     "fix or remove that line") from None
                warnings.warn(f"{self.path}:{i}: skipping a truncated last {self.noun}")
                if repair:
                    self._rewrite(lines[:i - 1])
        self.done = set()
        first = {}
        for i, r in enumerate(self.records):
            k = self.key(r)
            if k in first:
                raise ValueError(self._twice(k, first[k] + 1, i + 1))
            first[k] = i
            self.done.add(k)

    def key(self, record: dict) -> Tuple:
        raise NotImplementedError

    def _twice(self, key: Tuple, first: int, second: int) -> str:
        """The error for a file holding `key` on lines `first` and `second`."""
        raise NotImplementedError

    def _again(self, key: Tuple) -> str:
        """The error for writing a key the log holds."""
        raise NotImplementedError

    def _rewrite(self, lines: List[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(l + "\n" for l in lines if l.strip()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # a kill now leaves the old file or the new one, never neither

    def write(self, record: dict) -> None:
        """Append `record`; refuses a key the log holds."""
        key = self.key(record)
        if key in self.done:
            raise ValueError(self._again(key))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            # a file edited by hand may lack its final newline: never glue two records
            start = b""
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                start = b"" if f.read(1) == b"\n" else b"\n"
            f.write(start + (json.dumps(record, allow_nan=False, ensure_ascii=self.ensure_ascii) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(key)


class RecordLog(JsonLinesLog):
    """The study's record log: keys `record_key`; metrics finite or null."""

    def key(self, record: dict) -> Tuple:
        return record_key(record)

    def _twice(self, key: Tuple, first: int, second: int) -> str:
        return (f"{self.path}: record {key} is there twice (records {first} and {second}); "
                "two runs wrote to this folder. Its statistics would count it twice: keep "
                "one of the two lines (they are seeded alike), or delete the folder to start over")

    def _again(self, key: Tuple) -> str:
        return (f"{self.path}: record {key} is already written; a record is computed once "
                "(is another process running this study?)")

    def has(self, key: Tuple) -> bool:
        """`key` as record_key; a 4-tuple (no prune ratio) means prune_ratio None."""
        return (tuple(key) + (None,) * (5 - len(key))) in self.done

    def write(self, record: dict) -> None:
        """Append `record`; refuses a key the log holds and infinite values."""
        super().write({**record, "metrics": {m: _finite_or_null(m, v) for m, v in record["metrics"].items()},
                       "headline": _finite_or_null("headline", record["headline"])})


def _finite_or_null(name: str, value):
    """A metric value for the log: finite, or None where it is undefined (NaN)."""
    if value is None or not isinstance(value, float):
        return value
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise ValueError(f"metric {name!r} is {value}: an evaluation produced an infinite value; "
                         "nothing was recorded")
    return value
