"""Input scaling (static / absmax per tile / absmax per layer), iterative bound management and
the read-noise time option, against hand computations in float64.

The hand reference follows the formulas of `nn/periphery.py` for one token at a time: per row
tile k and column tile c, DAC codes round(clamp(x·n/(r·m))), ADC codes round(clamp(codes/n ·
W/w_max · n_adc/bound)), output += codes·m·(bound/n_adc)·w_max·r, re-reading with m = 2, 4, ...
while a code of that tile is at full scale. It asserts that no value it rounds sits within 1e-3
of a rounding boundary, so float32 and float64 give the same integer codes: the layer must
match it to float32 precision (rtol 1e-5, far below one ADC step), on every path — fused
programmed inference, the generic no-grad forward, and the autograd (HWA training) forward.
"""
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

import analogformer as af
import analogformer.nn.fused as fused_mod
import analogformer.nn.periphery as periphery_mod
from analogformer.config import ADCConfig, DACConfig, PCMConfig, TileConfig, from_dict
from analogformer.device import pcm
from analogformer.nn.tile import levels

PATHS = ["fused", "generic", "autograd", "train"]


def _exact_round(v: torch.Tensor) -> torch.Tensor:
    frac = (v - v.floor() - 0.5).abs()  # 0: exactly k + 1/2, as a token's absmax halved (n/2)
    assert ((frac > 1e-3) | (frac == 0)).all(), "hand reference too close to a rounding boundary"
    return v.round()


def hand_forward(x, w, b, rows, cols, scaling, r_static, dac_bits=8, adc_bits=10, bound=10.0,
                 bm_iters=0):
    """-> (outputs (N, out), re-reads {(row tile, iteration): tokens}, final codes per tile)."""
    x, w, b = x.double(), w.double(), b.double()
    n_d, n_a = levels(dac_bits), levels(adc_bits)
    out = b.repeat(x.shape[0], 1)
    rereads, finals = {}, []
    row_lo = [sum(rows[:k]) for k in range(len(rows))]
    col_lo = [sum(cols[:c]) for c in range(len(cols))]
    for k, (lo, size) in enumerate(zip(row_lo, rows)):
        for c, (clo, csize) in enumerate(zip(col_lo, cols)):
            wt = w[clo:clo + csize, lo:lo + size].t()  # (rows, cols) of this crossbar
            w_max = wt.abs().max()
            for t in range(x.shape[0]):
                xs = x[t, lo:lo + size]
                r = {"static": torch.tensor(r_static, dtype=torch.float64), "absmax_tile": xs.abs().max(),
                     "absmax_layer": x[t].abs().max()}[scaling].clamp_min(1e-12)
                for j in range(bm_iters + 1):
                    m = 2.0 ** j
                    codes = _exact_round(xs * n_d / (r * m)).clamp(-n_d, n_d)
                    q = _exact_round(codes / n_d @ (wt / w_max) * n_a / bound).clamp(-n_a, n_a)
                    if q.abs().max() < n_a or j == bm_iters:
                        break
                    rereads.setdefault((k, j + 1), set()).add(t)
                finals.append(q)
                out[t, clo:clo + csize] += q * m * (bound / n_a) * w_max * r
    return out, rereads, finals


def _layer(cfg, w, b):
    layer = af.AnalogLinear(w.shape[1], w.shape[0], config=cfg)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    return layer.eval()


def _run(layer, x, path):
    """The layer's output on one of the forward paths (noise off: all deterministic)."""
    if path == "fused":
        with torch.no_grad():
            af.program(nn.Sequential(layer), seed=0)  # ideal devices: reads the same weights
            return layer(x)
    if path == "generic":
        with torch.no_grad():
            return layer(x)
    if path == "train":
        layer.train()
    return layer(x.clone().requires_grad_()).detach()


def _ideal_devices(**periphery):
    return af.AnalogConfig(pcm=PCMConfig(prog_noise=False, drift=False, read_noise=False),
                           tile=TileConfig(rows=4, cols=2), **periphery)


def _dyadic_weights(out_f, in_f, seed):
    """Weights in multiples of 1/4 up to 1: conductances and read weights are exact."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-4, 5, (out_f, in_f), generator=g).float() / 4
    w[:, 0] = w[:, 4] = 1.0  # every crossbar has max |W| = 1
    return w


# ------------------------------------------------------------------ input scaling

def test_input_scaling_values_and_the_deprecated_absmax_alias():
    assert DACConfig().input_scaling == "static"
    with pytest.warns(DeprecationWarning, match='"absmax" is deprecated: it is "absmax_layer"'):
        assert DACConfig(input_scaling="absmax").input_scaling == "absmax_layer"
    with pytest.warns(DeprecationWarning):
        assert from_dict(DACConfig, {"input_scaling": "absmax"}).input_scaling == "absmax_layer"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v in ("static", "absmax_tile", "absmax_layer"):
            assert DACConfig(input_scaling=v).input_scaling == v
    with pytest.raises(ValueError, match=r"DACConfig.input_scaling: must be one of \['absmax_layer', "
                                         r"'absmax_tile', 'static'\], got 'per_tile'"):
        DACConfig(input_scaling="per_tile")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scaling", ["absmax_tile", "absmax_layer", "static"])
def test_input_scaling_equals_hand_computed_per_slice_scaling(scaling, path):
    """2 row tiles × 2 column tiles; token 0 has an outlier (40) on row tile 0: per tile, its
    inputs on tile 1 keep their own range; per layer, they round to a code of 0 or ±1."""
    w = _dyadic_weights(4, 8, seed=1)
    b = torch.tensor([0.5, -0.25, 0.0, 1.0])
    x = torch.tensor([[40.0, 0.3, -0.7, 0.11, 0.9, -0.37, 0.53, 0.2],
                      [0.6, -0.45, 0.2, 0.33, -1.3, 0.8, 0.05, -0.6],
                      [0.0, 0.0, 0.0, 0.0, 0.41, -0.2, 0.9, 0.31]])  # an all-zero slice
    cfg = _ideal_devices(dac=DACConfig(input_scaling=scaling), adc=ADCConfig(bound=40.0, output_noise_std=None))
    layer = _layer(cfg, w, b)
    layer.input_range.data.fill_(2.0)
    ref, _, _ = hand_forward(x, w, b, [4, 4], [2, 2], scaling, 2.0, bound=40.0)
    torch.testing.assert_close(_run(layer, x, path).double(), ref, rtol=1e-5, atol=1e-5)
    if scaling == "absmax_tile" and path == "fused":  # the outlier's tile-1 slice: its own range
        coarse, _, _ = hand_forward(x, w, b, [4, 4], [2, 2], "absmax_layer", 2.0, bound=40.0)
        assert (ref[0] - coarse[0]).abs().max() > 0.05  # the per-layer range loses tile 1's inputs


@pytest.mark.parametrize("path", PATHS)
def test_absmax_tile_is_scale_invariant_per_token_and_tile(path):
    """Scaling one row tile's slice of a token by 2^k scales that tile's contribution exactly
    (per-tile ranges), which per-layer absmax does not do once the slice is not the maximum."""
    cfg = _ideal_devices(dac=DACConfig(input_scaling="absmax_tile"), adc=ADCConfig(output_noise_std=None))
    w = _dyadic_weights(4, 8, seed=2)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    zero_bias = torch.zeros(4)
    tile0, tile1 = x.clone(), x.clone()
    tile0[:, 4:] = 0
    tile1[:, :4] = 0
    out0 = _run(_layer(cfg, w, zero_bias), tile0, path)
    out1 = _run(_layer(cfg, w, zero_bias), tile1, path)
    scaled = x.clone()
    scaled[:, 4:] *= 1024.0
    both = _run(_layer(cfg, w, zero_bias), scaled, path)
    torch.testing.assert_close(both, out0 + 1024.0 * out1, rtol=1e-6, atol=1e-4)


# ------------------------------------------------------------------ bound management

BOUND = 1.5  # the ADC saturates at 1.5 "fully on" rows


def _saturating_case():
    """4 tokens × 8 inputs on 2×2 crossbars of 4×2 (row tile k, column tile c), static r = 1.
    Token 0 saturates crossbar (0, 0) twice (3.66 -> 1.83 -> 0.92 rows), token 1 crossbars (1, 0)
    and (1, 1) once, token 2 nothing, token 3 crossbars (0, 0), (1, 0) and (1, 1) twice."""
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.25, -0.5, 0.0, 1.0],
                      [0.5, -0.5, 0.25, 0.0, 1.0, 1.0, 1.0, 1.0],
                      [-0.25, 0.5, 0.0, 1.0, 1.0, 0.5, -0.75, 0.25],
                      [1.0, 0.0, -0.5, 0.25, -1.0, -1.0, -1.0, -1.0]])
    x = torch.tensor([[0.93, 0.91, 0.87, 0.95, 0.1, 0.2, -0.1, 0.05],
                      [0.1, -0.2, 0.3, 0.05, 0.47, 0.41, 0.45, 0.44],
                      [0.2, 0.1, -0.3, 0.4, 0.3, -0.2, 0.1, 0.25],
                      [0.97, 0.96, 0.98, 0.99, 0.97, 0.99, 0.96, 0.98]])
    return w, torch.tensor([0.1, 0.0, -0.2, 0.3]), x


def _recording(monkeypatch, module):
    """Record (row tile, m, re-read tokens) of every bound-management re-read (the loop is
    entered once per row tile, in order, here where every row tile has a saturated read)."""
    calls = []
    original = module.reread_saturated

    def wrapped(y, limit, col_sizes, max_iters, read, *on_replace):
        tile = wrapped.tile
        wrapped.tile += 1

        def rec(rows, m):
            calls.append((tile, m, sorted(rows.tolist())))
            return read(rows, m)
        return original(y, limit, col_sizes, max_iters, rec, *on_replace)
    wrapped.tile = 0
    monkeypatch.setattr(module, "reread_saturated", wrapped)
    return calls


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scaling, cols", [("static", 2), ("absmax_tile", 2), ("static", 4)])
def test_bound_management_rereads_exactly_the_saturated_tiles(scaling, cols, path, monkeypatch):
    """Crossbars of 4 rows × `cols` columns (4: one column tile, a token re-reads all outputs)."""
    w, b, x = _saturating_case()
    bm = ADCConfig(bound=BOUND, output_noise_std=None, bound_management="iterative", bound_management_max_iters=4)
    cfg = _ideal_devices(dac=DACConfig(input_scaling=scaling), adc=bm)
    layer = _layer(dataclasses.replace(cfg, tile=TileConfig(rows=4, cols=cols)), w, b)
    layer.input_range.data.fill_(1.0)
    col_sizes = [cols] * (4 // cols)
    ref, rereads, finals = hand_forward(x, w, b, [4, 4], col_sizes, scaling, 1.0, bound=BOUND, bm_iters=4)
    clipped, _, _ = hand_forward(x, w, b, [4, 4], col_sizes, scaling, 1.0, bound=BOUND, bm_iters=0)
    assert all(q.abs().max() < levels(10) for q in finals)  # the constructed case ends unsaturated
    assert (ref - clipped).abs().max() > 1.0  # where clipping would lose more than a fully-on row
    # as constructed (per-tile ranges bring token 1's slice on row tile 1 to full scale: twice)
    assert rereads == {(0, 1): {0, 3}, (0, 2): {0, 3}, (1, 1): {1, 3},
                       (1, 2): {3} if scaling == "static" else {1, 3}}
    if path == "fused":
        with torch.no_grad():
            af.program(nn.Sequential(layer), seed=0)  # (its reference read is not recorded)
    calls = _recording(monkeypatch, fused_mod if path == "fused" else periphery_mod)
    if path == "fused":
        with torch.no_grad():
            out = layer(x)
    else:
        out = _run(layer, x, path)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert {(tile, int(math.log2(m))): set(rows) for tile, m, rows in calls} == rereads


@pytest.mark.parametrize("path", ["fused", "generic", "train"])
def test_bound_management_changes_nothing_when_nothing_saturates(path):
    """With output noise on: no re-read, no extra noise draw, so bit-identical outputs."""
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(4)) * 0.3
    x = torch.randn(7, 10, generator=torch.Generator().manual_seed(5))
    outs = []
    for bm in (None, "iterative"):
        cfg = af.AnalogConfig(tile=TileConfig(rows=4, cols=4), adc=ADCConfig(bound_management=bm))
        layer = _layer(cfg, w, torch.zeros(6))
        layer.input_range.data.fill_(3.0)
        torch.manual_seed(9)  # the training path draws from the global RNG
        outs.append(_run(layer, x, path))
    assert torch.equal(outs[0], outs[1])


def test_bound_managed_training_gradient_is_the_linear_one():
    """STE: a re-read token's gradient is W^T·g (the re-read at r·2^j has d codes/dx = n/(r·2^j),
    times 2^j after the ADC); without bound management its saturated outputs pass none."""
    w, b, x = _saturating_case()
    g = torch.randn(4, 4, generator=torch.Generator().manual_seed(6))
    grads = {}
    for bm in (None, "iterative"):
        layer = _layer(_ideal_devices(adc=ADCConfig(bound=BOUND, output_noise_std=None, bound_management=bm)), w, b)
        layer.input_range.data.fill_(1.0)
        layer.train()
        xr = x.clone().requires_grad_()
        layer(xr).backward(g)
        grads[bm] = xr.grad
    torch.testing.assert_close(grads["iterative"], g @ w, rtol=1e-5, atol=1e-5)
    assert (grads[None][0] - (g @ w)[0]).abs().max() > 0.1  # token 0's saturated outputs are cut


def test_bound_management_needs_an_adc_and_names_its_fields():
    with pytest.raises(ValueError, match="ADCConfig.bound_management: must be null .off. or 'iterative', got 'none'"):
        ADCConfig(bound_management="none")
    with pytest.raises(ValueError, match="ADCConfig.bound_management: re-reads tiles that saturate the ADC"):
        ADCConfig(bits=None, bound_management="iterative")
    with pytest.raises(ValueError, match="ADCConfig.bound_management_max_iters: must be > 0"):
        ADCConfig(bound_management="iterative", bound_management_max_iters=0)
    with pytest.raises(ValueError, match=r"analog.adc.bound_management_max_iters: expected int"):
        from_dict(af.AnalogConfig, {"adc": {"bound_management_max_iters": 2.5}}, prefix="analog")


def test_compensation_reference_under_input_scaling_and_bound_management():
    """The one-hot reference read is the same for every input scaling (a one-hot input is its
    own absmax: the DAC's full code); with an ADC bound below one full row, bound management
    re-reads rows at half scale (DAC code round(127/2) = 64), as a hand computation says."""
    w = _dyadic_weights(4, 8, seed=7)
    refs = []
    for scaling in ("static", "absmax_tile", "absmax_layer"):
        layer = _layer(af.AnalogConfig(dac=DACConfig(input_scaling=scaling), tile=TileConfig(rows=4, cols=2)),
                       w, torch.zeros(4))
        af.program(nn.Sequential(layer), seed=3)
        refs.append(layer._comp_ref)
    assert torch.equal(refs[0], refs[1]) and torch.equal(refs[0], refs[2])
    adc = dict(bits=10, bound=0.6, output_noise_std=None)
    layer = _layer(_ideal_devices(adc=ADCConfig(**adc, bound_management="iterative")), w, torch.zeros(4))
    af.program(nn.Sequential(layer), seed=0)
    n_a = levels(10)
    wn = layer._to_tiles(w).double()  # |w| = w_max = 1 per crossbar: normalized = W
    y = (wn * n_a / 0.6).round().clamp(-n_a, n_a)
    half = (wn * (64 / 127) * n_a / 0.6).round().clamp(-n_a, n_a) * 2
    y = torch.where((y.abs() >= n_a).view(2, 4, 2, 2).any(-1, keepdim=True).expand(2, 4, 2, 2).reshape(2, 4, 4),
                    half, y) * 0.6 / n_a
    level = y.abs().mean(1).view(2, 2, 2).mean(-1, keepdim=True).expand(2, 2, 2).reshape(2, 4)
    torch.testing.assert_close(layer._comp_ref.double(), level, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ read-noise time

def test_read_noise_time_t_plus_t0_shifts_the_accumulated_noise_time():
    spec, aihwkit = PCMConfig(), PCMConfig(read_noise_time="t_plus_t0")
    for t in (0.0, 1.0, 2_592_000.0):
        assert pcm.read_noise_time_factor(t, spec) == (math.sqrt(math.log((t + 250e-9) / 500e-9)) if t else 0.0)
        assert pcm.read_noise_time_factor(t, aihwkit) == math.sqrt(math.log((t + 20.0 + 250e-9) / 500e-9))
    with pytest.raises(ValueError, match=r"PCMConfig.read_noise_time: must be one of \['t', 't_plus_t0'\]"):
        PCMConfig(read_noise_time="t0")
    # seeded statistics: at t = 0 only t + t0 has read noise, std γ·g·Q_s·f (drift off)
    g_prog = torch.full((200_000,), 20.0)
    cfg = PCMConfig(read_noise_time="t_plus_t0", drift=False)
    z = (pcm.conductance_at(g_prog, None, 0.0, cfg, torch.Generator().manual_seed(0)) - g_prog)
    sigma = 20.0 * pcm.read_noise_q(g_prog[:1], cfg).item() * pcm.read_noise_time_factor(0.0, cfg)
    n = g_prog.numel()
    assert abs(z.mean().item()) < 4 * sigma / math.sqrt(n)
    assert abs(z.std().item() - sigma) < 4 * sigma / math.sqrt(2 * n)
    assert torch.equal(pcm.conductance_at(g_prog, None, 0.0, PCMConfig(drift=False), torch.Generator()), g_prog)


def test_bound_management_with_the_dac_off_agrees_on_every_path():
    """DAC off: inputs halve exactly (no re-quantization), so a bound-managed read is the
    clipped-free ADC reading of W·x: every path gives the hand result with unrounded inputs."""
    w, b, x = _saturating_case()
    cfg = _ideal_devices(dac=DACConfig(bits=None), adc=ADCConfig(bound=BOUND, output_noise_std=None,
                                                                 bound_management="iterative"))
    n_a = levels(10)
    ref = b.double().repeat(4, 1)
    for k in (0, 1):
        for c in (0, 1):
            wt = w[2 * c:2 * c + 2, 4 * k:4 * k + 4].double().t()
            y = x[:, 4 * k:4 * k + 4].double() @ wt  # r = 1, w_max = 1
            m = torch.ones(4, 1, dtype=torch.float64)
            for _ in range(4):  # halve while the rounded code is at full scale
                m = torch.where(((y / m * n_a / BOUND).round().abs() >= n_a).any(1, keepdim=True), 2 * m, m)
            ref[:, 2 * c:2 * c + 2] += (y / m * n_a / BOUND).round() * m * BOUND / n_a
    for path in PATHS:
        layer = _layer(cfg, w, b)
        layer.input_range.data.fill_(1.0)
        torch.testing.assert_close(_run(layer, x, path).double(), ref, rtol=1e-5, atol=1e-5)
