"""The record log and the report never count a record twice and never hide an undefined
value (issue: duplicate records inflated n and shrank the SEM; NaNs went undetected)."""
import json
import math

import pytest

from analogformer.report import build_report, load_records, summarize
from analogformer.study.records import RecordLog


def _rec(repeat, value, t=2592000.0, cond="analog"):
    return {"task": "sst2", "condition": cond, "t_seconds": t, "repeat": repeat,
            "metrics": {"accuracy": value}, "headline": value}


def test_the_log_refuses_a_key_it_holds(tmp_path):
    log = RecordLog(tmp_path / "r.jsonl")
    log.write(_rec(0, 0.8))
    with pytest.raises(ValueError, match=r"record \('sst2', 'analog', 2592000.0, 0, None\) is already "
                                         r"written; a record is computed once \(is another process running"):
        log.write(_rec(0, 0.8))
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1


def test_a_file_holding_a_key_twice_is_an_error_naming_both(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (_rec(0, 0.8), _rec(1, 0.7), _rec(0, 0.8))))
    with pytest.raises(ValueError, match=r"is there twice \(records 1 and 3\); two runs wrote to this folder"):
        RecordLog(path)
    with pytest.raises(ValueError, match=r"appears twice \(records 1 and 3\)"):
        build_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_undefined_metrics_are_stored_as_null_and_named_in_the_tables(tmp_path):
    log = RecordLog(tmp_path / "results.jsonl")
    for r, v in enumerate([0.8, float("nan"), 0.6]):
        log.write(_rec(r, v))
    log.write(_rec(0, 0.9, t=None, cond="digital"))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["headline"] is None and "NaN" not in "".join(lines)
    row = next(r for r in summarize(load_records(tmp_path / "results.jsonl")) if r["condition"] == "analog")
    assert (row["n"], row["undefined"]) == (2, 1) and math.isclose(row["mean"], 0.7)
    md = build_report(tmp_path).read_text()
    assert "70.00 ± 10.00 (1 of 3 undefined)" in md
    with pytest.raises(ValueError, match="metric 'accuracy' is inf: an evaluation produced an infinite value"):
        log.write(_rec(5, float("inf")))


def test_a_truncated_last_line_is_repaired_atomically_and_only_by_the_owner(tmp_path):
    path = tmp_path / "results.jsonl"
    log = RecordLog(path)
    log.write(_rec(0, 0.5))
    text = path.read_text()
    path.write_text(text + '{"task": "sst2", "cond')  # killed mid-write
    with pytest.warns(UserWarning, match="skipping a truncated last record"):
        assert len(RecordLog(path, repair=False).records) == 1
    assert path.read_text().endswith('"cond')  # a reader (merge) leaves another study's file alone
    with pytest.warns(UserWarning):
        assert len(RecordLog(path).records) == 1
    assert path.read_text() == text and not (tmp_path / "results.jsonl.tmp").exists()


def test_a_file_without_its_final_newline_gets_no_glued_record(tmp_path):
    path = tmp_path / "results.jsonl"
    RecordLog(path).write(_rec(0, 0.5))
    path.write_text(path.read_text().rstrip("\n"))  # edited by hand
    RecordLog(path).write(_rec(1, 0.5))
    assert [r["repeat"] for r in RecordLog(path).records] == [0, 1]
