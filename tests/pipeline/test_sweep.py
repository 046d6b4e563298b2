"""run_time_sweep: records of a resumed sweep equal the first run's, even when the
resumed group is calibrated in a different global-RNG state (a fresh process)."""
import torch

from analogformer.nn.attention import AttentionQuantConfig, calibrate_attention, quantize_attention
from analogformer.study.records import RecordLog
from analogformer.study.sweep import CONDITIONS, SweepConfig, run_time_sweep
from conftest import sweep_setup


def _setup(tmp_path):
    model, batch, cfg, evaluate = sweep_setup()

    def prepare(m, cond):
        if cond.attention_bits is not None:
            quantize_attention(m, AttentionQuantConfig(bits=cond.attention_bits))
            calibrate_attention(m, [batch])

    def run(log):
        return run_time_sweep({"digital": model}, "toy", [CONDITIONS["analog"], CONDITIONS["analog-nocomp"]],
                              evaluate, lambda met: met["mean_logit"], cfg,
                              SweepConfig(times_seconds=(1, 86400), repeats=2), log,
                              calib_batches=[batch], progress=False, prepare=prepare)

    def run_int(log, bits):
        from dataclasses import replace
        cond = replace(CONDITIONS["analog"], name=f"analog-int{bits}", attention_bits=bits)
        return run_time_sweep({"digital": model}, "toy", [cond], evaluate,
                              lambda met: met["mean_logit"], cfg,
                              SweepConfig(times_seconds=(1,), repeats=2), log,
                              calib_batches=[batch], progress=False, prepare=prepare)
    return run, run_int


def test_resumed_groups_calibrate_identically_in_any_rng_state(tmp_path):
    run, run_int = _setup(tmp_path)
    first = run(RecordLog(tmp_path / "a.jsonl")) + run_int(RecordLog(tmp_path / "a.jsonl"), 6)
    torch.manual_seed(12345)   # a different process: different global RNG state
    torch.randn(777)
    log = RecordLog(tmp_path / "b.jsonl")
    again = run_int(log, 6) + run(log)  # groups in another order, too
    key = lambda r: (r["condition"], r["t_seconds"], r["repeat"])
    assert sorted(first, key=key) == sorted(again, key=key)
