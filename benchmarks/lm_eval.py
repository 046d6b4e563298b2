"""Perplexity evaluation of a causal LM on tiles vs the same evaluation digitally, in one run.

Run: python benchmarks/lm_eval.py [--threads N] [--windows 2] [--rounds 5]
Target (issue 24): analog perplexity evaluation ≤ 1.3× the digital one.

SmolLM2-135M-Instruct (the bundled Q4_1 GGUF, de-quantized to float32), the first `--windows`
windows of 512 tokens of WikiText-2 raw test, `tasks.lm.lm_metrics` — the code a study runs.
The analog model is programmed and drifted to 1 month once (programming is timed separately:
a study programs once per device instance and reads every time point from that state); each
round times digital, `llm` preset and `spec` preset evaluations interleaved, and the ratio is
the median over rounds. Also prints program + drift time of all 210 analog matrices.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare  # noqa: E402

import analogformer as af  # noqa: E402
from analogformer.tasks.lm import lm_metrics  # noqa: E402
from analogformer.tasks.lm_data import LMDataConfig, encode_windows, read_split_text, window_loader  # noqa: E402
from analogformer.tasks.lm_models import load_causal_lm  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--windows", type=int, default=2, help="windows of 512 tokens evaluated per call")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the ratio is their median)")
    p.add_argument("--model", default="smollm2-135m")
    a = p.parse_args()
    af.tune_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    digital, tok = load_causal_lm(a.model)
    digital = digital.float().eval()
    cfg = LMDataConfig(wikitext2_dir=str(DATA), window_tokens=512, subsample="first")
    batches = list(window_loader(encode_windows(read_split_text("wikitext2", "eval", cfg), tok, cfg, False,
                                                a.windows, 0), 1, False))
    fns = {"digital": lambda: lm_metrics(digital, batches)}
    setup = {}
    for preset in ("llm", "spec"):
        m = af.analogize(copy.deepcopy(digital), af.AnalogConfig.preset(preset))
        if preset == "spec":  # static DAC ranges: calibrated on the digital model (as a study does)
            calib = list(window_loader(encode_windows(read_split_text("wikitext2", "train", cfg), tok, cfg, True, 2, 0),
                                       1, False))
            af.calibrate_input_ranges(m, [{k: v for k, v in b.items() if k != "labels"} for b in calib])
        t0 = time.perf_counter()
        af.program(m, seed=0)
        t1 = time.perf_counter()
        af.drift(m, 2_592_000)
        setup[preset] = (t1 - t0, time.perf_counter() - t1)
        fns[preset] = lambda m=m: lm_metrics(m, batches)
    n_w = sum(l.weight.numel() for _, l in af.analog_layers(m))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model}, {len(batches)} windows of 512 "
          f"tokens; {n_w / 1e6:.1f} M analog weights")
    rounds = [compare(fns, repeats=1, warmup=1 if r == 0 else 0) for r in range(a.rounds)]
    for preset in ("llm", "spec"):
        ratios = sorted(r[preset] / r["digital"] for r in rounds)
        mid = rounds[len(rounds) // 2]
        print(f"perplexity evaluation, {preset} preset vs digital: {mid[preset]:.2f} s vs {mid['digital']:.2f} s, "
              f"ratio {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds, {ratios[0]:.2f}-{ratios[-1]:.2f}; "
              f"target <= 1.3x); program {setup[preset][0]:.2f} s, drift to 1 month {setup[preset][1]:.2f} s")


if __name__ == "__main__":
    main()
