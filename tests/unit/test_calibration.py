"""Calibration on digital activations: the DAC ranges (and attention scales) are those of
the model as trained, whatever noise its analog layers would add (issue: calibrating the
already-analog model let noise widen the percentiles, 597 instead of 58.5 on SmolLM2)."""
import copy

import torch

import analogformer as af
from analogformer.nn.attention import AttentionQuantConfig, calibrate_attention, quantize_attention
from conftest import tiny


def _batch():
    g = torch.Generator().manual_seed(0)
    return dict(input_ids=torch.randint(5, 99, (4, 12), generator=g), attention_mask=torch.ones(4, 12, dtype=torch.long))


def _digital_ranges(model, batch, percentile):
    """The reference: each layer's input percentile on the plain digital model, by hand."""
    inputs = {}

    def keep(name):
        def hook(mod, args):
            inputs[name] = args[0].detach().abs().flatten()
        return hook
    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n != "classifier" and "pooler" not in n]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    out = {}
    for n, a in inputs.items():
        k = int(torch.ceil(torch.tensor(a.numel() * percentile / 100.0)))
        out[n] = a.kthvalue(k).values.item()
    return out


def test_ranges_are_those_of_the_digital_model_whatever_the_noise():
    digital = tiny("bert")
    batch = _batch()
    want = _digital_ranges(digital, batch, 99.0)
    cfg = af.AnalogConfig()
    cfg.tile.rows = cfg.tile.cols = 16
    cfg.adc.output_noise_std = 0.5  # loud periphery noise: it would widen every later layer's inputs
    model = af.analogize(copy.deepcopy(digital), cfg)
    got = af.calibrate_input_ranges(model, [batch], percentile=99.0)
    assert got == {n: want[n] for n in got} and len(got) == 12
    af.program(model, seed=0)
    af.drift(model, 2592000)
    assert af.calibrate_input_ranges(model, [batch], percentile=99.0) == got  # programmed: the same
    # the layers are analog again after calibration: noisy outputs, two reads differ
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, digital(**batch).logits)
    assert all("forward" not in layer.__dict__ for _, layer in af.analog_layers(model))


def test_attention_scales_ignore_the_analog_layers_noise():
    digital = tiny("bert")
    batch = _batch()
    acfg = AttentionQuantConfig(bits=8)
    ref = quantize_attention(copy.deepcopy(digital), acfg)
    want = calibrate_attention(ref, [batch])
    cfg = af.AnalogConfig()
    cfg.tile.rows = cfg.tile.cols = 16
    cfg.adc.output_noise_std = 0.5
    model = quantize_attention(af.analogize(copy.deepcopy(digital), cfg), acfg)
    assert calibrate_attention(model, [batch]) == want
