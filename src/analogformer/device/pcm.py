"""PCM device physics of SPEC §2 as pure functions of tensors and a `torch.Generator`.

Conductances are in µS. Every function takes the `PCMConfig` that holds the constants;
nothing here keeps state. The constants default to the values calibrated on ~1 M doped-GST
devices (Nandakumar 2019, Joshi 2020) that aihwkit's `PCMLikeNoiseModel` also uses.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..config import PCMConfig


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def prog_noise_std(g_target: torch.Tensor, cfg: PCMConfig) -> torch.Tensor:
    """σ_prog(g_T) = γ · max(c0 + c1·(g_T/g_max) + c2·(g_T/g_max)², 0), coefficients scaled by g_max/25."""
    c0, c1, c2 = (c * cfg.g_max_us / 25.0 for c in cfg.prog_coeffs_us)
    r = g_target / cfg.g_max_us
    # Horner, in place on one temporary: (c2·r + c1)·r + c0
    sigma = torch.mul(r, c2).add_(c1).mul_(r).add_(c0).clamp_min_(0.0)
    return sigma if cfg.gamma == 1.0 else sigma.mul_(cfg.gamma)


def program_conductance(g_target: torch.Tensor, cfg: PCMConfig,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """g_prog = max(g_T + σ_prog(g_T)·N(0,1), 0); exactly g_T when programming noise is off."""
    if not cfg.prog_noise or cfg.gamma == 0:
        return g_target.clone()
    noise = _randn_like(g_target, generator)
    return noise.mul_(prog_noise_std(g_target, cfg)).add_(g_target).clamp_min_(0.0)


def drift_exponent_stats(g_target: torch.Tensor, cfg: PCMConfig):
    """(μ_ν, σ_ν) of the drift exponent, computed from the programming *target*."""
    log_g = (g_target / cfg.g_max_us).clamp_min_(1e-7).log_()
    (am, bm), (lo_m, hi_m) = cfg.nu_mean_coeffs, cfg.nu_mean_clamp
    (as_, bs), (lo_s, hi_s) = cfg.nu_std_coeffs, cfg.nu_std_clamp
    mu = torch.mul(log_g, am).add_(bm).clamp_(lo_m, hi_m)
    sigma = log_g.mul_(as_).add_(bs).clamp_(lo_s, hi_s)  # log_g is ours: reuse it
    return mu, sigma


def sample_drift_exponents(g_target: torch.Tensor, cfg: PCMConfig,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ν = |μ_ν + σ_ν·N(0,1)| per device (ν = μ_ν when `drift_spread` is off)."""
    mu, sigma = drift_exponent_stats(g_target, cfg)
    if not cfg.drift_spread:
        return mu
    return _randn_like(g_target, generator).mul_(sigma).add_(mu).abs_()


def skip_drift_exponents(g_target: torch.Tensor, cfg: PCMConfig,
                         generator: Optional[torch.Generator] = None) -> None:
    """Advance `generator` exactly as `sample_drift_exponents(g_target, cfg, generator)` would,
    without computing ν (its draws, when `drift_spread` is on)."""
    if cfg.drift_spread:
        _randn_like(g_target, generator)


def drift_factor(t_seconds: float, nu: torch.Tensor, cfg: PCMConfig) -> torch.Tensor:
    """((t + t_0)/t_0)^(−ν): the multiplicative conductance decay at t seconds
    (computed as exp(−ν·ln((t + t_0)/t_0)), half the time of a tensor-exponent pow)."""
    return torch.mul(nu, -math.log((t_seconds + cfg.t0_seconds) / cfg.t0_seconds)).exp_()


def read_noise_q(g_prog: torch.Tensor, cfg: PCMConfig) -> torch.Tensor:
    """Q_s = min(0.0088 / max(g_prog/g_max, 1e-3)^0.65, 0.2)."""
    # a / r^p = a·exp(−p·ln r), in place on one temporary
    r = (g_prog / cfg.g_max_us).clamp_min_(1e-3)
    return r.log_().mul_(-cfg.read_noise_exponent).exp_().mul_(cfg.read_noise_coeff) \
        .clamp_max_(cfg.read_noise_cap)


def read_noise_time_factor(t_seconds: float, cfg: PCMConfig) -> float:
    """sqrt(ln((t' + t_read)/(2·t_read))), zero while t' ≤ t_read (no 1/f noise accumulated yet);
    t' = t (SPEC §2) or t + t0 with `read_noise_time="t_plus_t0"` (aihwkit's `PCMLikeNoiseModel`)."""
    if cfg.read_noise_time == "t_plus_t0":
        t_seconds = t_seconds + cfg.t0_seconds
    arg = (t_seconds + cfg.t_read_seconds) / (2.0 * cfg.t_read_seconds)
    return math.sqrt(math.log(arg)) if arg > 1.0 else 0.0


def read_noise_std(g_drift: torch.Tensor, g_prog: torch.Tensor, t_seconds: float,
                   cfg: PCMConfig) -> torch.Tensor:
    """σ_nG(t) = γ · g_drift(t) · Q_s(g_prog) · sqrt(ln((t' + t_read)/(2·t_read))), t' = t or t + t0."""
    return cfg.gamma * g_drift * read_noise_q(g_prog, cfg) * read_noise_time_factor(t_seconds, cfg)


def conductance_at(g_prog: torch.Tensor, nu: Optional[torch.Tensor], t_seconds: float,
                   cfg: PCMConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """g(t) = max(g_prog·drift + σ_nG(t)·N(0,1), 0): the conductance read at t seconds."""
    if t_seconds < 0 or not math.isfinite(t_seconds):
        raise ValueError(f"t_seconds must be a finite number >= 0, got {t_seconds!r}")
    g = drift_factor(t_seconds, nu, cfg).mul_(g_prog) if (cfg.drift and nu is not None) else g_prog.clone()
    tf = read_noise_time_factor(t_seconds, cfg)
    if not cfg.read_noise or cfg.gamma == 0 or tf == 0.0:
        return g
    sigma = read_noise_q(g_prog, cfg).mul_(g).mul_(cfg.gamma * tf)
    return g.add_(sigma.mul_(_randn_like(g, generator))).clamp_min_(0.0)


def expected_drift_factor(t_seconds: float, g_target: torch.Tensor, cfg: PCMConfig,
                          n_quad: int = 64) -> torch.Tensor:
    """E[((t+t0)/t0)^(−ν)] with ν = |μ + σ·Z|, by Gauss–Hermite quadrature (for tests/reports)."""
    import numpy as np

    mu, sigma = drift_exponent_stats(g_target, cfg)
    if not cfg.drift_spread:
        return drift_factor(t_seconds, mu, cfg)
    x, w = np.polynomial.hermite_e.hermegauss(n_quad)  # weight exp(-x²/2)
    x = torch.tensor(x, dtype=torch.float64, device=g_target.device)
    w = torch.tensor(w / math.sqrt(2 * math.pi), dtype=torch.float64, device=g_target.device)
    nu = (mu.double().unsqueeze(-1) + sigma.double().unsqueeze(-1) * x).abs()
    lt = math.log((t_seconds + cfg.t0_seconds) / cfg.t0_seconds)
    return (torch.exp(-nu * lt) * w).sum(-1).to(g_target.dtype)
