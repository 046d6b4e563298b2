"""Every draw is seeded from values, never positions (issue: growing a study's time points
changed the draws of existing ones). A sweep grown in times, repeats or conditions, a sweep
split across record logs, and a model with one layer left digital give exactly the draws of
one fresh run."""
import copy

import pytest
import torch

import analogformer as af
from analogformer.seeding import derive_seed
from analogformer.study.records import RecordLog
from analogformer.study.sweep import CONDITIONS, SweepConfig, run_time_sweep
from conftest import sweep_setup, tiny


def test_derive_seed_is_a_function_of_the_named_values():
    assert derive_seed(0, "read", 1, 3600.0) == derive_seed(0, "read", 1, 3600)
    assert derive_seed(0, "read", 1, 3600.0) != derive_seed(0, "read", 1, 3601.0)
    assert derive_seed(0, "read", 1, 1.5) != derive_seed(0, "read", 1, 2.5)
    assert derive_seed(0, "ab", "c") != derive_seed(0, "a", "bc")  # no concatenation clash
    assert derive_seed(0, "1") != derive_seed(0, 1)
    assert 0 <= derive_seed(2 ** 40, "x") < 2 ** 63
    with pytest.raises(TypeError, match="parts are ints, floats, strings or None, got bool True"):
        derive_seed(0, True)
    with pytest.raises(ValueError, match="a float part must be finite, got nan"):
        derive_seed(0, float("nan"))


def _sweep(tmp_path):
    model, batch, cfg, evaluate = sweep_setup()

    def run(name, times, repeats, conditions):
        return run_time_sweep({"digital": model}, "toy", [CONDITIONS[c] for c in conditions], evaluate,
                              lambda met: met["mean_logit"], cfg,
                              SweepConfig(times_seconds=times, repeats=repeats), RecordLog(tmp_path / name),
                              calib_batches=[batch], progress=False)
    return run


def _by_key(records):
    return {(r["condition"], r["t_seconds"], r["repeat"]): r["metrics"] for r in records}


def test_a_grown_sweep_equals_a_fresh_run_of_the_larger_config(tmp_path):
    run = _sweep(tmp_path)
    small = run("grown.jsonl", (2592000,), 1, ["analog"])
    run("grown.jsonl", (1, 3600, 2592000), 2, ["analog-nocomp", "analog"])  # times first, more repeats
    fresh = run("fresh.jsonl", (1, 3600, 2592000), 2, ["analog-nocomp", "analog"])
    grown = _by_key(RecordLog(tmp_path / "grown.jsonl").records)
    assert grown == _by_key(fresh) and len(grown) == 3 * 2 * 2
    assert _by_key(small).items() <= grown.items()  # the first run's records stand unchanged


def test_a_sweep_split_by_time_equals_one_run(tmp_path):
    run = _sweep(tmp_path)
    parts = run("a.jsonl", (1,), 2, ["analog"]) + run("b.jsonl", (86400, 2592000), 2, ["analog"])
    assert _by_key(parts) == _by_key(run("all.jsonl", (1, 86400, 2592000), 2, ["analog"]))


def test_a_layer_left_digital_changes_no_other_layers_devices():
    model = tiny("bert")
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    full = af.analogize(copy.deepcopy(model), af.AnalogConfig())
    fewer = af.analogize(copy.deepcopy(model), af.AnalogConfig(
        exclude=af.AnalogConfig().exclude + (r"layer\.0\.attention\.self\.query$",)))
    outs = []
    for m in (full, fewer):
        af.program(m, seed=3)
        af.drift(m, 86400, read_seed=5)
        with torch.no_grad():
            outs.append({n: layer(x) for n, layer in af.analog_layers(m) if layer.in_features == 32})
    assert len(outs[0]) == len(outs[1]) + 1
    for name, y in outs[1].items():
        assert torch.equal(outs[0][name], y), name
