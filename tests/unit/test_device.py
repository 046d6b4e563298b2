"""PCM physics against the SPEC §2 formulas, with seeded statistics."""
import math

import pytest
import torch

from analogformer.config import PCMConfig
from analogformer.device import pcm
from analogformer.device.conductance import conductances_to_weight, weight_to_conductances

N = 200_000
CFG = PCMConfig()


def spec_sigma_prog(g, gamma=1.0, g_max=25.0):
    c0, c1, c2 = (c * g_max / 25.0 for c in (0.26348, 1.9650, -1.1731))
    r = g / g_max
    return gamma * max(c0 + c1 * r + c2 * r * r, 0.0)


@pytest.mark.parametrize("rel", [0.1, 0.5, 1.0])
def test_programming_noise_sigma_matches_spec(rel):
    gen = torch.Generator().manual_seed(1)
    g_t = torch.full((N,), rel * 25.0, dtype=torch.float64)
    g_p = pcm.program_conductance(g_t, CFG, gen)
    expected = spec_sigma_prog(rel * 25.0)
    # targets far above σ: the clamp at 0 never acts, so the std is σ_prog itself
    assert abs(g_p.std().item() / expected - 1) < 0.03
    assert abs(g_p.mean().item() - rel * 25.0) < 4 * expected / math.sqrt(N)


def test_programming_noise_scales_with_gamma_and_gmax():
    gen = torch.Generator().manual_seed(2)
    cfg = PCMConfig(gamma=0.5, g_max_us=50.0)
    g_t = torch.full((N,), 25.0, dtype=torch.float64)
    sd = pcm.program_conductance(g_t, cfg, gen).std().item()
    assert abs(sd / spec_sigma_prog(25.0, 0.5, 50.0) - 1) < 0.03
    assert torch.equal(pcm.program_conductance(g_t, PCMConfig(prog_noise=False)), g_t)


def test_drift_exponent_distribution():
    for rel in (0.05, 0.5, 1.0):
        g = torch.tensor([rel * 25.0])
        mu, sd = pcm.drift_exponent_stats(g, CFG)
        lg = math.log(rel)
        assert mu.item() == pytest.approx(min(max(-0.0155 * lg + 0.0244, 0.049), 0.1), rel=1e-6)
        assert sd.item() == pytest.approx(min(max(-0.0125 * lg - 0.0059, 0.008), 0.045), rel=1e-6)
    gen = torch.Generator().manual_seed(3)
    nu = pcm.sample_drift_exponents(torch.full((N,), 12.5, dtype=torch.float64), CFG, gen)
    mu, sd = pcm.drift_exponent_stats(torch.tensor([12.5], dtype=torch.float64), CFG)
    assert (nu >= 0).all()
    assert abs(nu.mean().item() - mu.item()) < 5 * sd.item() / math.sqrt(N)


@pytest.mark.parametrize("t", [3600.0, 30 * 86400.0])
def test_mean_drift_factor_matches_nu_distribution(t):
    gen = torch.Generator().manual_seed(4)
    g_t = torch.full((N,), 20.0, dtype=torch.float64)
    nu = pcm.sample_drift_exponents(g_t, CFG, gen)
    cfg = PCMConfig(read_noise=False)
    factor = pcm.conductance_at(g_t, nu, t, cfg) / g_t
    # expectation of ((t+t0)/t0)^-|μ+σZ| by quadrature over the SPEC ν distribution
    expected = pcm.expected_drift_factor(t, torch.tensor([20.0], dtype=torch.float64), CFG).item()
    assert abs(factor.mean().item() - expected) < 5 * factor.std().item() / math.sqrt(N)
    # and the quadrature itself against an independent Monte-Carlo in float64
    mu = min(max(0.0244 - 0.0155 * math.log(0.8), 0.049), 0.1)  # clamped: 0.049
    sd = min(max(-0.0125 * math.log(0.8) - 0.0059, 0.008), 0.045)
    z = torch.randn(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mc = (((t + 20) / 20) ** -(mu + sd * z).abs()).mean().item()
    assert expected == pytest.approx(mc, rel=2e-3)


@pytest.mark.parametrize("t", [1.0, 86400.0, 30 * 86400.0])
def test_read_noise_sigma_matches_qs_formula(t):
    gen = torch.Generator().manual_seed(6)
    g_p = torch.full((N,), 10.0, dtype=torch.float64)
    nu = torch.full((N,), 0.05, dtype=torch.float64)
    g = pcm.conductance_at(g_p, nu, t, CFG, gen)
    g_drift = 10.0 * ((t + 20) / 20) ** -0.05
    q_s = min(0.0088 / (10.0 / 25.0) ** 0.65, 0.2)
    sigma = g_drift * q_s * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))
    assert abs(g.std().item() / sigma - 1) < 0.03
    assert abs(g.mean().item() - g_drift) < 5 * sigma / math.sqrt(N)


def test_read_noise_off_and_gamma_zero_are_exact_drift():
    g_p = torch.rand(1000, dtype=torch.float64) * 25
    nu = torch.rand(1000, dtype=torch.float64) * 0.1
    exact = g_p * ((100.0 + 20.0) / 20.0) ** (-nu)
    assert torch.allclose(pcm.conductance_at(g_p, nu, 100.0, PCMConfig(read_noise=False)), exact, rtol=0, atol=1e-12)
    assert torch.allclose(pcm.conductance_at(g_p, nu, 100.0, PCMConfig(gamma=0.0)), exact, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="t_seconds"):
        pcm.conductance_at(g_p, nu, -1.0, CFG)


def test_conductance_mapping_round_trip():
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.25, 1.0, 1.5]])
    gp, gm = weight_to_conductances(w, 25.0)
    assert gp.tolist() == [[0.0, 0.0, 0.0, 6.25, 25.0, 25.0]]
    assert gm.tolist() == [[25.0, 12.5, 0.0, 0.0, 0.0, 0.0]]
    assert conductances_to_weight(gp, gm, 25.0).tolist() == [[-1.0, -0.5, 0.0, 0.25, 1.0, 1.0]]
