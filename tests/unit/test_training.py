"""Hardware-aware training: weight noise statistics, straight-through gradients, clipping,
learned DAC ranges, output scales, and a short HWA fine-tune of a tiny BERT."""
import copy
import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import analogformer as af
from analogformer.config import PCMConfig
from analogformer.device.pcm import prog_noise_std
from analogformer.training.finetune import FinetuneConfig, finetune
from analogformer.training import (OUTPUT_SCALE, HWAConfig, clip_weights, hwa_after_step,
                                   param_groups, prepare_hwa, remove_hwa)



pytestmark = pytest.mark.usefixtures("one_thread")


NOISE_ONLY = dict(clip=None, input_range_init=None, learn_input_ranges=False)


def ideal_layer(in_f, out_f, seed=0, **cfg_kw):
    torch.manual_seed(seed)
    cfg = af.AnalogConfig.ideal()
    for k, v in cfg_kw.items():
        setattr(cfg.tile, k, v)
    return af.AnalogLinear(in_f, out_f, config=cfg)


def injected_noise(layer):
    """Forward an identity batch in train mode: out[j, i] = (w_n + n)[j, i]·w_max + b_i,
    so the injected normalized noise is (out − F.linear) / w_max (one tile here)."""
    eye = torch.eye(layer.in_features)
    layer.train()
    with torch.no_grad():
        out = layer(eye)
        ref = nn.functional.linear(eye, layer.weight, layer.bias)
    w_max = layer.weight.abs().max()
    return (out - ref) / w_max


# ------------------------------------------------------------------ noise statistics
def test_gaussian_noise_std_is_scale_in_normalized_units():
    layer = ideal_layer(512, 256)  # 131 072 weights on one 512x512 tile
    prepare_hwa(layer, HWAConfig(weight_noise="gaussian", weight_noise_scale=0.05, **NOISE_ONLY))
    torch.manual_seed(1)
    n = injected_noise(layer).flatten()
    assert n.numel() >= 1e5
    assert n.std().item() == pytest.approx(0.05, rel=0.03)
    assert abs(n.mean().item()) < 4 * 0.05 / math.sqrt(n.numel())


@pytest.mark.parametrize("gamma,g_max", [(1.0, 25.0), (0.5, 25.0), (1.0, 10.0)])
def test_pcm_noise_follows_programming_noise_curve(gamma, g_max):
    pcm = PCMConfig(gamma=gamma, g_max_us=g_max)
    layer = ideal_layer(512, 200)
    layer.config.pcm = pcm
    levels = [0.0, 0.1, 0.5, 1.0]
    with torch.no_grad():  # 50 columns per level, signs alternating (G+ or G− holds it)
        sign = torch.where(torch.arange(512) % 2 == 0, 1.0, -1.0)
        w = torch.stack([lvl * sign for lvl in levels for _ in range(50)])  # (200, 512)
        layer.weight.copy_(w)
    scale = 0.7
    prepare_hwa(layer, HWAConfig(weight_noise="pcm", weight_noise_scale=scale, **NOISE_ONLY))
    torch.manual_seed(2)
    n = injected_noise(layer).t()  # (out, in) like the weight
    c0 = pcm.prog_coeffs_us[0] * gamma * g_max / 25.0  # σ_prog(0), coefficients scale with g_max
    for k, lvl in enumerate(levels):
        nk = n[50 * k:50 * (k + 1)].flatten()  # 25 600 samples: std known to ~0.5 %
        s_on = prog_noise_std(torch.tensor(lvl * g_max), pcm).item()
        expected = scale * math.sqrt(s_on ** 2 + c0 ** 2) / g_max
        assert nk.std().item() == pytest.approx(expected, rel=0.03), lvl
        assert abs(nk.mean().item()) < 4 * expected / math.sqrt(nk.numel())
        if lvl == 0.0:  # both devices at 0: sqrt(2)·scale·c0/g_max
            assert nk.std().item() == pytest.approx(math.sqrt(2) * scale * c0 / g_max, rel=0.03)
    # the hook's closed form equals the SPEC curve on both devices of each pair
    w = torch.linspace(-1, 1, 2001)
    g_plus, g_minus = w.clamp(min=0) * g_max, (-w).clamp(min=0) * g_max
    spec = scale * (prog_noise_std(g_plus, pcm) ** 2 + prog_noise_std(g_minus, pcm) ** 2).sqrt() / g_max
    assert torch.allclose(layer.weight_noise.std(w), spec, rtol=1e-5, atol=0)
    # the curve itself: at w = 1 the "on" device noise is (c0 + c1 + c2)·γ·g_max/25
    assert prog_noise_std(torch.tensor(g_max), pcm).item() == pytest.approx(
        gamma * sum(pcm.prog_coeffs_us) * g_max / 25.0)


def test_noise_resampled_per_forward_and_gradient_straight_through():
    layer = ideal_layer(48, 24, seed=3)
    prepare_hwa(layer, HWAConfig(weight_noise="pcm", weight_noise_scale=2.0, **NOISE_ONLY))
    layer.train()
    x = torch.randn(16, 48)
    g = torch.randn(16, 24)
    out1, out2 = layer(x), layer(x)
    ref = nn.functional.linear(x, layer.weight, layer.bias)
    d1, d2 = (out1 - ref).detach(), (out2 - ref).detach()
    assert d1.abs().mean() > 1e-3 and d2.abs().mean() > 1e-3  # noise is there ...
    assert (d1 - d2).abs().mean() > 0.5 * d1.abs().mean()  # ... and fresh on each call
    (out1 * g).sum().backward()
    # additive detached noise: d out / d W is the noiseless linear map's gradient
    assert torch.allclose(layer.weight.grad, g.t() @ x, atol=1e-5, rtol=1e-5)
    assert torch.allclose(layer.bias.grad, g.sum(0), atol=1e-5)
    layer.eval()  # no weight noise outside training mode
    with torch.no_grad():
        assert torch.equal(layer(x), ref)


@pytest.mark.parametrize("pool", [1 << 16, None])
def test_training_output_noise_from_pool_is_standard_normal_and_fresh(pool):
    """Output noise in HWA training: windows of one shared N(0, 1) pool at random offsets
    (or fresh draws with pool None): std = output_noise_std in ADC-bound units, different
    on every forward, reproducible from torch's seed."""
    cfg = af.AnalogConfig.ideal()
    cfg.adc.output_noise_std = 0.05  # no ADC / DAC: y + 0.05·n in units of w_max·r
    torch.manual_seed(0)
    layer = af.AnalogLinear(64, 128, config=cfg, bias=False)
    layer.input_range.data.fill_(1.0)
    torch.manual_seed(1)
    prepare_hwa(layer, HWAConfig(weight_noise=None, output_noise_pool=pool, **NOISE_ONLY))
    assert (layer._train_noise_pool is None) == (pool is None)
    layer.train()
    x = torch.zeros(256, 64)  # zero inputs: the output is the noise alone
    w_max = float(layer.weight.detach().abs().max())
    with torch.no_grad():
        torch.manual_seed(2)
        a, b = layer(x) / w_max, layer(x) / w_max
        torch.manual_seed(2)
        a2 = layer(x) / w_max
    assert torch.equal(a, a2)                       # seeded
    assert float((a - b).abs().mean()) > 0.02       # a different window / draw each forward
    for n in (a, b):
        assert abs(float(n.std()) - 0.05) < 0.05 * 0.03 and abs(float(n.mean())) < 0.002
    remove_hwa(layer)
    assert layer._train_noise_pool is None
    with pytest.raises(ValueError, match="output_noise_pool"):
        HWAConfig(output_noise_pool=0)


def test_no_noise_when_off_and_remove_hwa_drops_hook():
    layer = ideal_layer(32, 16)
    prepare_hwa(layer, HWAConfig(weight_noise=None, **NOISE_ONLY))
    assert layer.weight_noise is None
    prepare_hwa(layer, HWAConfig(weight_noise="gaussian", weight_noise_scale=0.1, **NOISE_ONLY))
    assert layer.weight_noise is not None
    remove_hwa(layer)
    assert layer.weight_noise is None
    x = torch.randn(4, 32)
    layer.train()
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


# ------------------------------------------------------------------ clipping
@pytest.mark.parametrize("clip,granularity", [("fixed", "layer"), ("sigma", "layer"), ("sigma", "column")])
def test_clipping_holds_after_large_adamw_step(clip, granularity):
    layer = ideal_layer(64, 32, seed=4)
    cfg = HWAConfig(weight_noise="gaussian", weight_noise_scale=0.02, clip=clip, clip_value=0.05,
                    clip_sigma=2.0, clip_granularity=granularity,
                    input_range_init=None)
    prepare_hwa(layer, cfg)
    after_step = hwa_after_step(cfg)
    opt = torch.optim.AdamW(layer.parameters(), lr=1.0)
    layer.train()
    x = torch.zeros(8, 64)
    x[:, :8] = torch.randn(8, 8)
    for _ in range(3):
        # only an 8x4 block gets gradient: AdamW moves it by ~lr = 1, far beyond the rest
        loss = layer(x)[:, :4].pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = layer.weight.detach()
        if clip == "fixed":
            bound = torch.full((32, 1), 0.05)
        elif granularity == "layer":
            bound = 2.0 * w.std(correction=0).expand(32, 1)
        else:
            bound = 2.0 * w.std(dim=1, correction=0, keepdim=True)
        hit = (w.abs() > bound).any(dim=1)
        assert hit.any()  # the large step pushed weights out of bounds
        after_step(layer)
        w = layer.weight.detach()
        assert (w.abs() <= bound).all()
        # rows that were out of bounds now touch the bound exactly
        assert torch.equal(w.abs().amax(dim=1)[hit], bound.squeeze(1)[hit])


def test_clip_weights_needs_analog_layers_and_hwa_config():
    with pytest.raises(ValueError, match="analogize"):
        clip_weights(nn.Sequential(nn.Linear(3, 3)), HWAConfig())
    with pytest.raises(ValueError, match="analogize"):
        prepare_hwa(nn.Sequential(nn.Linear(3, 3)), HWAConfig(input_range_init=None))
    with pytest.raises(ValueError, match="HWAConfig"):
        clip_weights(ideal_layer(3, 3), {"clip": "fixed"})


# ------------------------------------------------------------------ input ranges
def _range_run(r0, lr, steps=12):
    torch.manual_seed(5)
    layer = af.AnalogLinear(64, 32, config=af.AnalogConfig())  # 8-bit DAC, ADC, output noise
    teacher = nn.Linear(64, 32)
    teacher.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "input_range"})
    cfg = HWAConfig(weight_noise="pcm", clip=None, input_range_init=None, input_range_lr=lr)
    prepare_hwa(layer, cfg)
    layer.input_range.data.fill_(r0)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    groups = param_groups(layer, lr=1e-4, input_range_lr=lr)
    assert len(groups) == 1 and groups[0]["params"][0] is layer.input_range
    opt = torch.optim.Adam(groups)
    after_step = hwa_after_step(cfg)
    layer.train()
    rs = [r0]
    for _ in range(steps):
        x = torch.rand(128, 64) * 6 - 3  # data in ±3
        loss = (layer(x) - teacher(x).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_step(layer)
        rs.append(layer.input_range.item())
    return rs


def test_input_range_grows_when_too_small():
    rs = _range_run(0.05, lr=0.05)  # every input clipped: r gets gradient through the clip
    assert all(b > a for a, b in zip(rs, rs[1:])), rs
    assert rs[-1] > 0.4


def test_input_range_shrinks_when_too_large():
    rs = _range_run(100.0, lr=2.0)  # quantization and output noise both grow with r
    assert all(b < a for a, b in zip(rs, rs[1:])), rs
    assert rs[-1] < 80


def test_input_range_init_from_data_is_the_percentile():
    torch.manual_seed(6)
    model = nn.Sequential(af.AnalogLinear(40, 8, config=af.AnalogConfig()))
    batches = [torch.randn(50, 40) * s for s in (1.0, 2.0, 1.5)]
    cfg = HWAConfig(input_range_percentile=99.0, input_range_batches=2, clip=None)
    prepare_hwa(model, cfg, calib_batches=iter(batches))
    r = model[0].input_range
    # the largest per-batch 99th percentile of |x| over the first 2 batches (nearest rank)
    expected = max(b.abs().flatten().kthvalue(math.ceil(0.99 * b.numel())).values.item()
                   for b in batches[:2])
    assert r.item() == pytest.approx(expected, rel=1e-6)
    assert r.item() == pytest.approx(torch.quantile(batches[1].abs().flatten(), 0.99).item(), rel=0.02)
    assert r.requires_grad
    prepare_hwa(model, HWAConfig(input_range_init="config", learn_input_ranges=False, clip=None))
    assert r.item() == af.AnalogConfig().dac.init_range and not r.requires_grad
    with pytest.raises(ValueError, match="calib_batches"):
        prepare_hwa(model, HWAConfig(input_range_init="data"))


def test_param_groups_separate_ranges():
    torch.manual_seed(0)
    model = af.analogize(tiny_bert(), af.AnalogConfig())
    prepare_hwa(model, HWAConfig(input_range_init=None, output_scales=True))
    groups = param_groups(model, lr=1e-3, weight_decay=0.1, input_range_lr=0.05)
    decay, no_decay, ranges = groups
    layers = af.analog_layers(model)
    assert decay["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim < 2 for p in no_decay["params"])
    assert ranges == {"params": [l.input_range for _, l in layers], "weight_decay": 0.0, "lr": 0.05}
    n_all = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_all


# ------------------------------------------------------------------ output scales
def test_output_scales_in_state_dict_and_fold_exactly():
    layer = ideal_layer(24, 12, seed=7)
    prepare_hwa(layer, HWAConfig(weight_noise=None, output_scales=True, **NOISE_ONLY))
    s = getattr(layer, OUTPUT_SCALE)
    assert isinstance(s, nn.Parameter) and s.shape == (12,)
    assert OUTPUT_SCALE in layer.state_dict()
    with torch.no_grad():
        s.copy_(torch.linspace(0.5, 1.5, 12))
    x = torch.randn(5, 24)
    layer.eval()
    with torch.no_grad():
        ref = nn.functional.linear(x, layer.weight, None) * s + layer.bias
        out = layer(x)
    assert torch.allclose(out, ref, atol=1e-6)
    copied = copy.deepcopy(layer)  # hooks travel with deep copies
    with torch.no_grad():
        assert torch.allclose(copied(x), ref, atol=1e-6)
    remove_hwa(layer)
    assert OUTPUT_SCALE not in layer.state_dict() and not layer._forward_hooks
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-5)
        assert torch.allclose(copied(x), ref, atol=1e-6)  # the copy is untouched


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize("kw,field", [
    (dict(weight_noise="uniform"), "weight_noise"),
    (dict(weight_noise_scale=-1.0), "weight_noise_scale"),
    (dict(clip="hard"), "clip"),
    (dict(clip="fixed"), "clip_value"),
    (dict(clip="sigma", clip_sigma=0), "clip_sigma"),
    (dict(clip_granularity="tile"), "clip_granularity"),
    (dict(learn_input_ranges=1), "learn_input_ranges"),
    (dict(input_range_init="random"), "input_range_init"),
    (dict(input_range_percentile=120), "input_range_percentile"),
    (dict(input_range_batches=0), "input_range_batches"),
    (dict(input_range_lr=0.0), "input_range_lr"),
    (dict(output_scales="yes"), "output_scales"),
])
def test_bad_config_values_name_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"HWAConfig\.{field}:"):
        HWAConfig(**kw)


def test_config_dict_round_trip():
    from analogformer.config import from_dict, to_dict
    cfg = HWAConfig(weight_noise="gaussian", weight_noise_scale=0.03, clip="fixed", clip_value=0.1)
    assert from_dict(HWAConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="clip_granularity"):
        from_dict(HWAConfig, {"clip_granularity": "row"})


# ------------------------------------------------------------------ end to end
def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2))


def toy_batches(n, batch=16, seq=12, seed=0):
    """Label 1 iff token 5 is in the sequence (else token 6 is)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(10, 99, (batch, seq), generator=g)
        labels = torch.randint(0, 2, (batch,), generator=g)
        pos = torch.randint(1, seq, (batch,), generator=g)
        ids[torch.arange(batch), pos] = torch.where(labels == 1, 5, 6)
        out.append(dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels))
    return out


def mean_loss(model, batches):
    model.eval()
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in batches) / len(batches)


def test_short_hwa_finetune_reduces_loss_and_keeps_clipping():
    model = af.analogize(tiny_bert(), af.AnalogConfig())
    train, held_out = toy_batches(40, seq=6, seed=0), toy_batches(4, seq=6, seed=1)
    cfg = HWAConfig(weight_noise="pcm", weight_noise_scale=1.0, clip="sigma", clip_sigma=3.0,
                    input_range_batches=2, output_scales=True)
    prepare_hwa(model, cfg, calib_batches=[{k: v for k, v in b.items() if k != "labels"}
                                           for b in train])
    torch.manual_seed(0)
    before = mean_loss(model, held_out)
    hist = finetune(model, train, FinetuneConfig(learning_rate=5e-3, epochs=1, warmup_ratio=0.1),
                    after_step=hwa_after_step(cfg), progress=False)
    after = mean_loss(model, held_out)
    assert hist.steps == 40
    assert after < 0.3 * before, (before, after)
    for _, layer in af.analog_layers(model):
        # the bound is 3σ of the weights *before* the last clip; clipping the tails then
        # lowers σ by a few per mille, so allow 2 % over the post-clip σ
        w = layer.weight.detach()
        assert w.abs().max() <= 3.0 * w.std(correction=0) * 1.02
    # programmed inference after HWA: remove hooks (folding output scales), program, drift
    remove_hwa(model)
    af.program(model, seed=0)
    af.drift(model, 3600)
    assert mean_loss(model, held_out) < 0.3 * before


def test_hf_trainer_callback_clips():
    from analogformer.training import HWACallback
    from transformers import TrainerCallback
    model = af.analogize(tiny_bert(), af.AnalogConfig())
    cfg = HWAConfig(clip="fixed", clip_value=0.01, input_range_init=None)
    prepare_hwa(model, cfg)
    layer = af.analog_layers(model)[0][1]
    with torch.no_grad():
        layer.weight.mul_(100)
    cb = HWACallback(cfg)
    assert isinstance(cb, TrainerCallback)
    cb.on_step_end(args=None, state=None, control=None, model=model)
    assert layer.weight.abs().max().item() == pytest.approx(0.01)
