"""Programmed state: what a layer holds (bytes per weight), the regenerated devices against the
float32 draws of SPEC §2, bfloat16 models and autocast, and CUDA (skipped without a GPU)."""
import copy

import pytest
import torch
from torch import nn

import analogformer as af
from analogformer.config import ADCConfig, PCMConfig
from analogformer.device import pcm
from analogformer.device.conductance import conductances_to_weight, weight_scales, weight_to_conductances
from analogformer.inference import layer_generator
from conftest import tiny

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _layer(cfg, n_in=100, n_out=70, rows=64, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = copy.deepcopy(cfg)
    cfg.tile.rows = rows
    lin = nn.Linear(n_in, n_out).to(dtype)
    layer = af.AnalogLinear.from_linear(lin, cfg, name="layer")
    layer.input_range.data.fill_(3.0)
    return layer


def _reference_state(layer, seed):
    """The float32 G± and ν± the layer held before it regenerated them: drawn from the
    layer's generator as SPEC §2 says (programming noise, then drift exponents)."""
    cfg = layer.config.pcm
    g = layer_generator(seed, "layer")
    wt = layer._to_tiles(layer.weight.detach().float())
    scale = weight_scales(wt, layer.col_sizes, False)
    g_t = torch.stack(weight_to_conductances((wt / scale.unsqueeze(1)).clamp(-1, 1), cfg.g_max_us))
    g_prog = pcm.program_conductance(g_t, cfg, g)
    return g_t, g_prog, pcm.sample_drift_exponents(g_t, cfg, g)


@pytest.mark.parametrize("pool", [True, False])
def test_regenerated_devices_equal_the_float32_draws(pool):
    """G± and ν± are not held: `programmed_devices()` regenerates them, bit for bit the float32
    tensors SPEC §2's draws give; and each read at t is the one the float32 state gives."""
    cfg = af.AnalogConfig(adc=ADCConfig(noise_pool_size=2 ** 16 if pool else None))
    layer = _layer(cfg)
    model = nn.Sequential()
    model.add_module("layer", layer)
    af.program(model, 5)
    g_t, g_prog, nu = _reference_state(layer, 5)
    got_g, got_nu = layer.programmed_devices()
    assert got_g.dtype == torch.float32 and torch.equal(got_g, g_prog) and torch.equal(got_nu, nu)
    assert 0.2 < (g_prog - g_t).std() < 2.0  # programming noise is there (σ_prog: 0.26-1.06 µS)
    for t in (3600.0, 2592000.0):
        # the read at t: the generator goes on from where program left it (pool: right after
        # the ν draws; no pool: after the compensation read's output noise too)
        g = torch.Generator()
        g.set_state(layer._generator.get_state())
        af.drift(model, t)
        read = pcm.conductance_at(g_prog, nu, t, layer.config.pcm, g)
        ref = conductances_to_weight(read[0], read[1], layer.config.pcm.g_max_us) * layer._mvm_alpha()
        assert torch.equal(layer._w_read, ref)


def test_programmed_state_is_4_bytes_per_weight():
    """Counted from the tensors a programmed 512×512 layer holds: the float32 read weights (4 B)
    plus four (row tile, column) vectors and the saved generator state; 2 B for bfloat16."""
    for dtype, per_weight in ((torch.float32, 4), (torch.bfloat16, 2)):
        layer = _layer(af.AnalogConfig(), 512, 512, rows=512, dtype=dtype)
        assert layer.programmed_state_bytes() == 0
        with torch.no_grad():
            af.program(nn.Sequential(layer), 0)
            af.drift(nn.Sequential(layer), 86400.0)
        n = layer.weight.numel()
        vectors = 4 * 512 * 4  # scale, compensation reference and factor, output scale (float32)
        rng = layer._prog_rng_state.numel()
        assert layer.programmed_state_bytes() == per_weight * n + vectors + rng
        assert layer.programmed_state_bytes() / n < per_weight + 0.06 <= 8  # issue 26: <= 8 B/weight
        af.unprogram(nn.Sequential(layer))
        assert layer.programmed_state_bytes() == 0


def test_model_state_bytes_per_weight_and_no_second_copy():
    """A whole (tiny) model: the state is the read weights and small vectors, nothing sized like
    G± or ν±; the layers' read weights are their only per-weight tensors."""
    model = af.analogize(tiny("bert"), af.AnalogConfig())
    af.program(model, 0)
    af.drift(model, 60.0)
    for _, layer in af.analog_layers(model):
        big = [b for b in layer._STATE if getattr(layer, b) is not None
               and getattr(layer, b).numel() >= layer.weight.numel()]
        assert big == ["_w_read"] and layer._w_read.numel() == layer.weight.numel()  # tiles without padding


def test_weights_changed_after_program_is_an_error():
    layer = _layer(af.AnalogConfig())
    model = nn.Sequential(layer)
    af.program(model, 0)
    af.drift(model, 10.0)
    with torch.no_grad():
        layer.weight.data[3, 4] += 1e-3  # one weight, not the tile's max
    with pytest.raises(ValueError, match="weights changed since program"):
        af.drift(model, 20.0)
    af.program(model, 0)  # programming again takes the new weights
    af.drift(model, 20.0)


def test_config_edits_after_program_keep_the_programmed_devices():
    """Devices are drawn with the config as programmed; a later edit (γ, drift off) changes
    only what a read does, as when G± and ν± were held."""
    layer = _layer(af.AnalogConfig())
    model = nn.Sequential(layer)
    af.program(model, 1)
    g, nu = layer.programmed_devices()
    layer.config.pcm.gamma = 0.5
    layer.config.pcm.drift = False
    g2, nu2 = layer.programmed_devices()
    assert torch.equal(g, g2) and torch.equal(nu, nu2)
    af.drift(model, 2592000.0)  # drift off now: the read has read noise only
    d = (layer.read_weights() - conductances_to_weight(g[0], g[1], 25.0)).abs()
    assert d.max() < 0.2 and d.mean() > 1e-4


# ------------------------------------------------------------------ bfloat16
def _bf16_pair(noise: bool):
    cfg = af.AnalogConfig(adc=ADCConfig(output_noise_std=0.04 if noise else None))
    layer = _layer(cfg, dtype=torch.bfloat16).float()  # weights representable in bfloat16
    return layer, copy.deepcopy(layer).to(torch.bfloat16)


def _fwd_bwd(layer, x):
    y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y.detach().float(), layer.weight.grad.float(), layer.input_range.grad.float()


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().mean() / a.abs().mean())


def test_bf16_model_trains_on_tiles():
    """A bfloat16 model: forward and backward on tiles (DAC, per-tile GEMM, ADC, STE) in
    bfloat16, gradients in the model's dtype. Against the float32 layer on the same values the
    mean error is that of bfloat16 arithmetic (8 significant bits: DAC codes near a rounding
    boundary flip, ADC codes above 256 are even), ~1 % measured, bounded by 2.5 %."""
    ref_layer, layer = _bf16_pair(noise=False)
    x = torch.randn(256, 100).bfloat16()
    ref = _fwd_bwd(ref_layer.train(), x.float())
    got = _fwd_bwd(layer.train(), x)
    assert layer.weight.grad.dtype == torch.bfloat16 and layer.input_range.grad.dtype == torch.bfloat16
    assert _rel(ref[0], got[0]) < 0.025 and _rel(ref[1], got[1]) < 0.025 and _rel(ref[2], got[2]) < 0.05
    # with output noise (fresh draws per forward) the bfloat16 output is the float32 one up to the noise
    ref_layer, layer = _bf16_pair(noise=True)
    torch.manual_seed(0)
    y = layer.train()(x).float()
    assert torch.isfinite(y).all() and _rel(ref[0], y) < 0.1


def test_autocast_trains_on_tiles():
    """A float32 model under `torch.autocast("cpu", bfloat16)`: the GEMMs run in bfloat16,
    gradients reach the float32 weights and range; error vs float32 of bfloat16 size."""
    ref_layer, _ = _bf16_pair(noise=False)
    layer = copy.deepcopy(ref_layer)
    x = torch.randn(256, 100).bfloat16().float()
    ref = _fwd_bwd(ref_layer.train(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer.train()(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    assert _rel(ref[0], y.detach().float()) < 0.02 and _rel(ref[1], layer.weight.grad) < 0.02
    assert _rel(ref[2], layer.input_range.grad) < 0.05


def test_bf16_programmed_inference():
    """Programming a bfloat16 model draws the same devices (physics in float32) and keeps the
    read weights in bfloat16; the programmed outputs equal the float32 model's up to bfloat16
    rounding; under autocast a float32 programmed model runs its GEMMs in bfloat16."""
    ref_layer, layer = _bf16_pair(noise=True)
    x = torch.randn(64, 100).bfloat16()
    outs = []
    for m, xx in ((ref_layer, x.float()), (layer, x)):
        model = nn.Sequential(m.eval())
        with torch.no_grad():
            af.program(model, 2)
            af.drift(model, 86400.0, read_seed=3)  # the same read noise and output-noise offsets
            outs.append(m(xx).float())
        assert m._w_read.dtype == m.weight.dtype
    assert torch.equal(ref_layer.programmed_devices()[0], layer.programmed_devices()[0])
    assert _rel(outs[0], outs[1]) < 0.03
    ys = []
    for autocast in (False, True):
        af.reseed_noise(nn.Sequential(ref_layer), 4)  # the same output-noise windows
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ys.append(ref_layer(x.float()))
    assert ys[1].dtype == torch.bfloat16 and _rel(ys[0], ys[1]) < 0.02


def test_bf16_model_end_to_end():
    """A tiny bfloat16 HF model: analogize, HWA-free training step, program, drift, forward."""
    model = af.analogize(tiny("llama").to(torch.bfloat16), af.AnalogConfig())
    ids = torch.randint(0, 99, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [l.weight.grad for _, l in af.analog_layers(model)]
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)
    model.eval()
    af.program(model, 0)
    af.drift(model, 3600.0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


# ------------------------------------------------------------------ CUDA (skipped without a GPU)
@cuda
def test_cuda_state_follows_the_device():
    layer = _layer(af.AnalogConfig(), 512, 512, rows=512).cuda()
    model = nn.Sequential(layer)
    with torch.no_grad():
        af.program(model, 0)
        af.drift(model, 3600.0)
        y = layer(torch.randn(32, 512, device="cuda"))
    assert y.device.type == "cuda" and layer._generator.device.type == "cuda"
    assert all(getattr(layer, b).device.type == "cuda" for b in layer._STATE)
    assert layer._noise_pool.device.type == "cuda"
    g, nu = layer.programmed_devices()
    assert g.device.type == "cuda" and nu.device.type == "cuda"


def _instance_stats(layer, seed):
    """(mean, std, independent samples) of a device instance's programming error, drift
    exponents, read error at 1 month and forward error vs the digital layer."""
    model, dev = nn.Sequential(layer), layer.weight.device
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(1)).clamp(-3, 3).to(dev)
    with torch.no_grad():
        af.program(model, seed)
        g, nu = layer.programmed_devices()
        wt = layer._to_tiles(layer.weight.float())
        w_norm = (wt / layer._w_scale.unsqueeze(1)).clamp(-1, 1)
        prog_err = conductances_to_weight(g[0], g[1], 25.0) - w_norm
        af.drift(model, 2592000.0)
        read_err = layer.read_weights() - w_norm
        y = layer(x)
        fwd_err = (y - nn.functional.linear(x, layer.weight, layer.bias)) / y.std()
    # forward errors share a column's devices: about one independent sample per column
    return [(e.mean().item(), e.std().item(), n) for e, n in
            ((prog_err, prog_err.numel()), (nu, nu.numel()), (read_err, read_err.numel()), (fwd_err, 512))]


def _same_statistics(a, b):
    for (m0, s0, n), (m1, s1, _) in zip(a, b):
        assert abs(m0 - m1) < 5 * max(s0, s1) / n ** 0.5
        assert abs(s0 / s1 - 1) < 0.05


def test_device_instances_have_the_same_statistics():
    """Two device instances (seeds) of one layer: the comparison the CUDA test makes, here on
    the CPU, so its tolerances are known to hold for independent draws."""
    layer = _layer(af.AnalogConfig(), 512, 512, rows=512)
    _same_statistics(_instance_stats(layer, 0), _instance_stats(copy.deepcopy(layer), 1))


@cuda
def test_cuda_program_drift_forward_statistics_equal_cpu():
    """CUDA draws come from CUDA generators (another stream than the CPU's), so a CUDA device
    instance is not the CPU one; its statistics are the CPU's (within 5 σ/√n, std within 5 %)."""
    cpu = _layer(af.AnalogConfig(), 512, 512, rows=512)
    gpu = copy.deepcopy(cpu).cuda()
    _same_statistics(_instance_stats(cpu, 0), _instance_stats(gpu, 0))


def test_shared_copy_analogizes_without_a_second_copy_of_the_weights():
    """The sweep's analog model: `analogize(shared_copy(m))` converts a copy whose weight
    Parameters are m's own, and leaves m digital (same modules, same outputs)."""
    from analogformer.nn.convert import shared_copy
    model = tiny("bert")
    ids = torch.randint(0, 99, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    analog = af.analogize(shared_copy(model), af.AnalogConfig())
    assert not any(isinstance(m, af.AnalogLinear) for m in model.modules())
    layers = af.analog_layers(analog)
    digital = dict(model.named_modules())
    assert layers and all(l.weight is digital[n].weight and l.bias is digital[n].bias for n, l in layers)
    af.program(analog, 0)
    af.drift(analog, 3600.0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)
        assert not torch.equal(analog(input_ids=ids).logits, ref)
