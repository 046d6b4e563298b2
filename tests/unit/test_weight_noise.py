"""Additive weight noise (seed 002's "PCM weight noise" levels): the std the definition says
(level × the tile's max |W|, also with per-column conductance scales), zero on padding rows,
seeded from values, gone at the next read; the study's `weight-noise` condition expands into
one condition per level, each level is the same draw scaled, and its records resume exactly."""
import math

import pytest
import torch
from torch import nn

import analogformer as af
from analogformer.inference import add_weight_noise
from analogformer.study.config import StudyConfig
from analogformer.study.pipeline import study_conditions
from analogformer.study.records import RecordLog
from analogformer.study.sweep import SweepConfig, run_time_sweep


def _exact_model(weight_scale="tile"):
    """A 41 -> 48 linear on 32×32 tiles (row tiles of 21 and 20 inputs, the second padded by one
    row; column tiles of 24) with exact devices, so the read weights are W / w_max and whatever
    changes is the added noise. The four tiles get max |W| 1, 3, 10, 30; columns differ too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(41, 48))
    w = torch.randn(48, 41) * torch.linspace(0.2, 1.0, 48).unsqueeze(1)
    for (rows, cols), m in zip(((slice(0, 24), slice(0, 21)), (slice(24, 48), slice(0, 21)),
                                (slice(0, 24), slice(21, 41)), (slice(24, 48), slice(21, 41))), (1.0, 3.0, 10.0, 30.0)):
        w[rows, cols] *= m / w[rows, cols].abs().max()
    model[0].weight.data.copy_(w)
    cfg = af.AnalogConfig.ideal()
    cfg.tile.rows = cfg.tile.cols = 32
    cfg.tile.weight_scale = weight_scale
    model = af.analogize(model, cfg).eval()
    af.program(model, seed=0)
    assert model[0].row_sizes == [21, 20] and model[0].col_sizes == [24, 24]
    return model, w


@pytest.mark.parametrize("weight_scale", ["tile", "column"])
def test_noise_std_is_the_level_times_the_tiles_max_abs_weight(weight_scale):
    model, w = _exact_model(weight_scale)
    layer = model[0]
    clean = layer.read_weights().clone()
    level = 0.05
    add_weight_noise(model, level, seed=7)
    # back to weight units: normalized read × w_max of its (row tile, column)
    dw = (layer.read_weights() - clean) * layer._w_scale.unsqueeze(1)   # (K=2, R=32, out=48)
    assert torch.all(dw[1, 20:] == 0)                                    # the padding row of the short tile
    for k, rows in ((0, slice(0, 21)), (1, slice(0, 20))):
        for cols in (slice(0, 24), slice(24, 48)):
            tile_max = w[cols, 21 * k:21 * k + rows.stop].abs().max()
            z = (dw[k, rows, cols] / tile_max).flatten().double()
            n = z.numel()
            assert abs(z.mean().item()) < 4 * level / math.sqrt(n)
            assert abs(z.std().item() - level) < 4 * level / math.sqrt(2 * n), (k, cols, z.std().item())


def test_noise_is_seeded_from_values_and_gone_at_the_next_read():
    model, _ = _exact_model()
    layer = model[0]
    clean = layer.read_weights().clone()
    add_weight_noise(model, 0.035, seed=3)
    first = layer.read_weights().clone()
    af.drift(model, 60.0)                      # a new read: conductances as programmed (exact devices)
    assert torch.equal(layer.read_weights(), clean)
    add_weight_noise(model, 0.035, seed=3)
    assert torch.equal(layer.read_weights(), first)
    af.drift(model, 60.0)
    add_weight_noise(model, 0.07, seed=3)      # another level: the same draw, twice as large
    torch.testing.assert_close(layer.read_weights() - clean, 2 * (first - clean), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("std, message", [(-0.1, "std must be"), (float("nan"), "std must be"), (True, "std must be")])
def test_bad_std_is_refused(std, message):
    model, _ = _exact_model()
    with pytest.raises(ValueError, match=message):
        add_weight_noise(model, std, seed=0)


def test_unprogrammed_model_is_refused():
    cfg = af.AnalogConfig.ideal()
    model = af.analogize(nn.Sequential(nn.Linear(8, 4)), cfg)
    with pytest.raises(ValueError, match="not programmed"):
        add_weight_noise(model, 0.0175, seed=0)


@pytest.mark.parametrize("levels", [[], [0.0], [-1], [0.1, 0.1], "0.1", [True]])
def test_bad_levels_name_the_key(levels):
    with pytest.raises(ValueError, match="weight_noise_levels"):
        SweepConfig(weight_noise_levels=levels)


def test_study_expands_weight_noise_per_level_and_records_resume(tmp_path):
    cfg = StudyConfig(conditions=("digital", "analog", "weight-noise"),
                      sweep=SweepConfig(times_seconds=(1.0, 86400.0), repeats=2, weight_noise_levels=(0.01, 0.07)))
    conds = study_conditions(cfg)
    assert [c.name for c in conds] == ["digital", "analog", "weight-noise@0.01", "weight-noise@0.07"]
    assert [c.weight_noise for c in conds] == [None, None, 0.01, 0.07]

    torch.manual_seed(0)
    digital = nn.Sequential(nn.Linear(40, 24), nn.Tanh(), nn.Linear(24, 6)).eval()
    x = torch.randn(64, 40)
    with torch.no_grad():
        ref = digital(x)

    def evaluate(m):
        with torch.no_grad():
            return {"mse": float(((m(x) - ref) ** 2).mean())}
    acfg = af.AnalogConfig.ideal()
    acfg.tile.rows = acfg.tile.cols = 16
    log = RecordLog(tmp_path / "r.jsonl")
    run_time_sweep({"digital": digital}, "toy", conds, evaluate, lambda m: m["mse"], acfg, cfg.sweep, log,
                   progress=False)
    by = {(r["condition"], r["t_seconds"], r["repeat"]): r["headline"] for r in log.records}
    assert len(by) == 1 + 3 * 2 * 2
    for t in (1.0, 86400.0):
        for r in range(2):
            assert by[("analog", t, r)] < 1e-12           # exact devices, no noise: the digital model (to rounding)
            lo, hi = by[("weight-noise@0.01", t, r)], by[("weight-noise@0.07", t, r)]
            assert lo > 0 and hi > 10 * lo               # 7× the noise: ~49× the mse (tanh bends it a bit)
    # fresh draws per read and per device instance
    assert by[("weight-noise@0.07", 1.0, 0)] != by[("weight-noise@0.07", 86400.0, 0)]
    # resume: drop the last records, run again, get the very same numbers
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    (tmp_path / "r2.jsonl").write_text("\n".join(lines[:5]) + "\n")
    log2 = RecordLog(tmp_path / "r2.jsonl")
    run_time_sweep({"digital": digital}, "toy", conds, evaluate, lambda m: m["mse"], acfg, cfg.sweep, log2,
                   progress=False)
    assert {(r["condition"], r["t_seconds"], r["repeat"]): r["headline"] for r in log2.records} == by
