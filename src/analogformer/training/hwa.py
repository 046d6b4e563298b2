"""Hardware-aware (HWA) training: weight noise in the forward, weight clipping, learned
DAC input ranges, optional learned digital output scales (SPEC §4.2, seed 001 §2.2.2).

    import analogformer as af
    from analogformer.training import HWAConfig, prepare_hwa, hwa_after_step, remove_hwa
    model = af.analogize(model, af.AnalogConfig())
    hwa = HWAConfig(weight_noise="pcm", weight_noise_scale=1.0, clip="sigma", clip_sigma=2.5)
    prepare_hwa(model, hwa, calib_batches=train_batches)
    finetune(model, loader, FinetuneConfig(...), after_step=hwa_after_step(hwa))
    remove_hwa(model)
    af.program(model, seed=0); af.drift(model, 2_592_000)

What AnalogLinear already does in training mode (`module.train()`): live weights
normalized per tile (or column) to [-1, 1], DAC quantization with a straight-through
gradient over the learnable range `input_range` (clipped inputs give r its gradient, as
in PACT), output noise and ADC. This module adds the weight-noise hook
(`AnalogLinear.weight_noise`), clipping after each optimizer step, range initialisation
from data and optimizer parameter groups. All noise is additive and detached, so the
gradient reaches the weights straight through; it is drawn from the global torch RNG and
resampled on every forward (the ADC output noise: a window at a fresh random offset of a
pool drawn once from `prepare_hwa(seed=)`, `HWAConfig.output_noise_pool`)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..config import PCMConfig
from ..inference import calibrate_input_ranges
from ..nn.convert import analog_layers
from ..nn.linear import AnalogLinear
from ..seeding import derive_seed
from .param_groups import _unique, input_range_parameters, param_groups  # noqa: F401  (re-exported)

__all__ = ["HWAConfig", "GaussianWeightNoise", "PCMWeightNoise", "ChannelRelativeNoise", "has_static_range",
           "prepare_hwa", "remove_hwa",
           "clip_weights", "clamp_input_ranges", "hwa_after_step", "param_groups",
           "input_range_parameters", "HWACallback", "OUTPUT_SCALE"]

OUTPUT_SCALE = "hwa_output_scale"  # name of the per-column digital output scale Parameter


def fail(name: str, msg: str) -> None:
    raise ValueError(f"HWAConfig.{name}: {msg}")


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass
class HWAConfig:
    """Hardware-aware training knobs (SPEC §4.2). `None` switches a feature off."""

    weight_noise: Optional[str] = "pcm"
    """"gaussian": w_n + scale·N(0, 1) on the weights normalized per tile / column (w_n = W/w_max);
    "pcm": each device of the pair G± = max(±w_n, 0)·g_max gets scale·σ_prog(G±)·N(0, 1) (SPEC §2, γ too)."""
    weight_noise_scale: float = 1.0
    """Std of "gaussian" noise relative to max |W|; multiplier of the physical noise for "pcm"."""
    weight_noise_relative_to: str = "tile"
    """The max |W| the noise is relative to: "tile" = the one the tile maps to g_max (the tile's, or each
    column's with `tile.weight_scale: column`); "channel" = each output channel's own max |W| within its
    row tile, whatever the mapping (the noise a per-column mapping programs: a channel of small weights
    next to an outlier channel is not drowned by noise sized for the outlier)."""
    clip: Optional[str] = "sigma"
    """Weight clipping by `prepare_hwa` and after every optimizer step: "fixed" (|W| ≤ clip_value)
    or "sigma" (|W| ≤ clip_sigma·std(W), population std per `clip_granularity`); None = off. Language
    models keep information in outlier weights: a layer-wide 2.5σ clip takes SmolLM2-135M's WikiText-2
    perplexity from 26.7 to 622,674, and even 5σ per column to 48.5 (docs/lm-hwa.md); use None there."""
    clip_value: Optional[float] = None
    """Bound of clip "fixed", in weight units."""
    clip_sigma: Optional[float] = 2.5
    """Bound of clip "sigma", in standard deviations of the weights."""
    clip_granularity: str = "layer"
    """The std of clip "sigma" over the whole "layer" or over each output "column" (= output channel,
    one row of W: each channel is clipped at k·σ of its own weights)."""
    learn_input_ranges: bool = True
    """DAC ranges r get gradients (PACT-style, from clipped inputs); False freezes them. Only layers
    whose DAC uses a static range have one to learn: with per-token absmax input scaling
    (`dac.input_scaling: absmax_tile | absmax_layer`, the `llm` preset) the range of each token is
    its own max |x|, and such layers' `input_range` is neither initialised nor trained."""
    input_range_init: Optional[str] = "data"
    """"data": each layer's `input_range_percentile` of |x| on up to `input_range_batches`
    calibration batches (max |x| when the percentile is None); "config": `dac.init_range`; None: keep."""
    input_range_percentile: Optional[float] = 99.99
    """Percentile of |x| of "data" initialisation; None = max |x|."""
    input_range_batches: int = 10
    """Calibration batches of "data" initialisation."""
    input_range_lr: float = 1e-2
    """Learning rate of the ranges in `param_groups` (no weight decay)."""
    input_range_min: float = 1e-3
    """Ranges are kept ≥ this after every step (a range at 0 divides by 0)."""
    output_scales: bool = False
    """A learned digital scale per output column (after the ADC, before the bias), the Parameter
    `hwa_output_scale`; `remove_hwa` folds it into the weights."""
    output_noise_pool: Optional[int] = 1 << 24
    """Training forwards read the ADC output noise as a window, at a fresh random offset, of one pool of
    this many N(0, 1) draws (drawn by `prepare_hwa`, shared by the layers; fresh draws are an HWA step's
    largest cost). None: fresh draws every forward (also for outputs larger than the pool)."""

    def __post_init__(self):
        choices = {"weight_noise": ("gaussian", "pcm", None), "clip": ("fixed", "sigma", None),
                   "weight_noise_relative_to": ("tile", "channel"),
                   "clip_granularity": ("layer", "column"),
                   "input_range_init": ("data", "config", None)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not _is_number(self.weight_noise_scale) or self.weight_noise_scale < 0:
            fail("weight_noise_scale", f"must be a finite number >= 0, got {self.weight_noise_scale!r}")
        if self.clip == "fixed" and not (_is_number(self.clip_value) and self.clip_value > 0):
            fail("clip_value", f"must be a number > 0 when clip='fixed', got {self.clip_value!r}")
        if self.clip_value is not None and not (_is_number(self.clip_value) and self.clip_value > 0):
            fail("clip_value", f"must be a number > 0 or None, got {self.clip_value!r}")
        if self.clip == "sigma" and not (_is_number(self.clip_sigma) and self.clip_sigma > 0):
            fail("clip_sigma", f"must be a number > 0 when clip='sigma', got {self.clip_sigma!r}")
        if self.clip_sigma is not None and not (_is_number(self.clip_sigma) and self.clip_sigma > 0):
            fail("clip_sigma", f"must be a number > 0 or None, got {self.clip_sigma!r}")
        for name in ("learn_input_ranges", "output_scales"):
            if not isinstance(getattr(self, name), bool):
                fail(name, f"must be True or False, got {getattr(self, name)!r}")
        p = self.input_range_percentile
        if p is not None and not (_is_number(p) and 0 < p <= 100):
            fail("input_range_percentile", f"must be in (0, 100] or None (max |x|), got {p!r}")
        n = self.input_range_batches
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            fail("input_range_batches", f"must be an int >= 1, got {n!r}")
        n = self.output_noise_pool
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            fail("output_noise_pool", f"must be an int >= 1 or None (fresh draws), got {n!r}")
        for name in ("input_range_lr", "input_range_min"):
            v = getattr(self, name)
            if not (_is_number(v) and v > 0):
                fail(name, f"must be a finite number > 0, got {v!r}")


# ---------------------------------------------------------------- weight-noise hooks

class GaussianWeightNoise:
    """w_n + scale·N(0, 1): std `scale` in normalized units (relative to w_max)."""

    def __init__(self, scale: float):
        self.scale = float(scale)

    def noise(self, wn: torch.Tensor) -> torch.Tensor:
        # torch.randn, not randn_like: wn is a transposed view and strided draws are ~5× slower
        return torch.randn(wn.shape, dtype=wn.dtype, device=wn.device).mul_(self.scale)

    def __call__(self, wn: torch.Tensor) -> torch.Tensor:
        return wn + self.noise(wn)

    def std(self, wn: torch.Tensor) -> torch.Tensor:
        return torch.full_like(wn, self.scale)

    def __repr__(self) -> str:
        return f"GaussianWeightNoise(scale={self.scale:g})"


class PCMWeightNoise:
    """Programming-noise-like weight noise on the differential pair of each normalized weight.

    noise = scale·(σ_prog(G+)·N1 − σ_prog(G−)·N2)/g_max with G± = max(±w_n, 0)·g_max.
    N1, N2 are independent and symmetric, so this is drawn as one normal of std
    scale·sqrt(σ_prog(G+)² + σ_prog(G−)²)/g_max: the same distribution, half the draws.
    """

    def __init__(self, scale: float, pcm: PCMConfig):
        self.scale = float(scale)
        self.pcm = pcm

    def std(self, wn: torch.Tensor) -> torch.Tensor:
        """Per-weight std of the injected noise, in normalized units.

        σ_prog of `device.pcm.prog_noise_std`, evaluated in place (a dozen passes over the
        weights, no temporaries): with a = |w_n| = g/g_max, σ = γ·max(c0 + c1·a + c2·a², 0).
        """
        pcm = self.pcm
        c0, c1, c2 = (c * pcm.g_max_us / 25.0 for c in pcm.prog_coeffs_us)
        a = wn.detach().abs()  # the device that holds the weight; the other is at 0
        s_on = a.mul(c2).add_(c1).mul_(a).add_(c0).clamp_min_(0.0)
        s_off = max(c0, 0.0)  # σ_prog(0) of the device at zero
        k = pcm.gamma * self.scale / pcm.g_max_us
        return s_on.square_().add_(s_off * s_off).sqrt_().mul_(k)

    def noise(self, wn: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.std(wn).mul_(torch.randn(wn.shape, dtype=wn.dtype, device=wn.device))

    def __call__(self, wn: torch.Tensor) -> torch.Tensor:
        return wn + self.noise(wn)

    def __repr__(self) -> str:
        return f"PCMWeightNoise(scale={self.scale:g}, gamma={self.pcm.gamma:g})"


class ChannelRelativeNoise:
    """The noise of `inner` relative to each output channel's max |w| in its row tile: with
    m = max |w_n| of each column of each tile (K, 1, out), w_n + m·noise(w_n / m) — the noise
    of a mapping that gives every column the full conductance range. Detached like `inner`'s,
    so the gradient reaches the weights straight through."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, wn: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m = wn.detach().abs().amax(dim=1, keepdim=True).clamp_min_(torch.finfo(wn.dtype).tiny)
            noise = self.inner.noise(wn.detach() / m).mul_(m)
        return wn + noise

    def __repr__(self) -> str:
        return f"ChannelRelativeNoise({self.inner!r})"


def _make_noise(cfg: HWAConfig, layer: AnalogLinear):
    if cfg.weight_noise is None or cfg.weight_noise_scale == 0:
        return None
    if cfg.weight_noise == "gaussian":
        noise = GaussianWeightNoise(cfg.weight_noise_scale)
    else:
        noise = PCMWeightNoise(cfg.weight_noise_scale, layer.config.pcm)
    return ChannelRelativeNoise(noise) if cfg.weight_noise_relative_to == "channel" else noise


def has_static_range(layer: AnalogLinear) -> bool:
    """Whether the layer's DAC range r is its `input_range` Parameter (static input scaling, or no
    DAC: then r only sets the ADC's scale), rather than each token's max |x| (absmax scaling)."""
    dac = layer.config.dac
    return dac.bits is None or dac.input_scaling == "static"


# ---------------------------------------------------------------- output scales

def _output_scale_hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Digital per-column output scale after the ADC, before the bias: (y − b)·s + b."""
    s = getattr(module, OUTPUT_SCALE)
    if module.bias is None:
        return output * s
    return torch.addcmul(module.bias * (1 - s), output, s)


def _has_scale_hook(layer: nn.Module) -> bool:
    return any(h is _output_scale_hook for h in layer._forward_hooks.values())


def _add_output_scale(layer: AnalogLinear) -> None:
    if getattr(layer, OUTPUT_SCALE, None) is None:
        w = layer.weight
        layer.register_parameter(OUTPUT_SCALE, nn.Parameter(
            torch.ones(layer.out_features, device=w.device, dtype=w.dtype)))
    if not _has_scale_hook(layer):
        layer.register_forward_hook(_output_scale_hook)


@torch.no_grad()
def _drop_output_scale(layer: AnalogLinear, fold: bool) -> None:
    # hooks are found by identity, not by stored handles: a handle in a deep-copied model
    # would still point at the original module's hook dict
    for key in [k for k, h in layer._forward_hooks.items() if h is _output_scale_hook]:
        del layer._forward_hooks[key]
    s = layer._parameters.get(OUTPUT_SCALE)
    if s is None:
        return
    if fold:  # (x·W_iᵀ)·s_i = x·(s_i·W_i)ᵀ: exact for ideal devices
        layer.weight.mul_(s.detach().unsqueeze(1).to(layer.weight.dtype))
    del layer._parameters[OUTPUT_SCALE]


# ---------------------------------------------------------------- public verbs

def _require_analog(model: nn.Module, verb: str):
    if not isinstance(model, nn.Module):
        raise ValueError(f"{verb}: model must be a torch.nn.Module, got {type(model).__name__}")
    layers = analog_layers(model)
    if not layers:
        raise ValueError(f"{verb}: the model has no AnalogLinear layers; call "
                         "analogformer.analogize(model, cfg) first")
    return layers


def _check_cfg(cfg, verb: str) -> None:
    if not isinstance(cfg, HWAConfig):
        raise ValueError(f"{verb}: hwa_cfg must be an HWAConfig, got {type(cfg).__name__}")


def prepare_hwa(model: nn.Module, hwa_cfg: HWAConfig,
                calib_batches: Optional[Iterable] = None, seed: int = 0) -> nn.Module:
    """Set an analogized model up for HWA training, in place; returns it.

    Installs the weight-noise hook on every AnalogLinear (active in train mode only),
    initialises DAC ranges (from `calib_batches`, dicts of model kwargs or tensors, when
    `input_range_init="data"`), sets their requires_grad, adds output scales if
    configured, clips the weights once; the output-noise pool comes from `seed` alone (not
    the global RNG: a resumed run trains the same model). Calling it again replaces it.
    Layers with per-token absmax input scaling have no static range: theirs is left as it is
    and frozen, and a model with only such layers needs no `calib_batches`."""
    _check_cfg(hwa_cfg, "prepare_hwa")
    layers = _require_analog(model, "prepare_hwa")
    static = [layer for _, layer in layers if has_static_range(layer)]
    if hwa_cfg.input_range_init == "data" and static:
        if calib_batches is None:
            raise ValueError("prepare_hwa: HWAConfig.input_range_init='data' needs calib_batches "
                             "(an iterable of model-kwargs dicts); pass them, or set "
                             "input_range_init='config' or None")
        calibrate_input_ranges(model, itertools.islice(calib_batches, hwa_cfg.input_range_batches),
                               percentile=hwa_cfg.input_range_percentile)
    pool = None
    if hwa_cfg.output_noise_pool is not None and any(
            layer.config.adc.output_noise_std is not None for _, layer in layers):
        gen = torch.Generator().manual_seed(derive_seed(int(seed), "<hwa output-noise pool>"))
        pool = torch.randn(hwa_cfg.output_noise_pool, generator=gen).to(layers[0][1].weight.device)
    for _, layer in layers:
        layer.weight_noise = _make_noise(hwa_cfg, layer)
        layer._train_noise_pool = pool
        if hwa_cfg.input_range_init == "config" and has_static_range(layer):
            layer.input_range.data.fill_(layer.config.dac.init_range)
        layer.input_range.requires_grad_(hwa_cfg.learn_input_ranges and has_static_range(layer))
        if hwa_cfg.output_scales:
            _add_output_scale(layer)
        else:
            _drop_output_scale(layer, fold=True)
    clip_weights(model, hwa_cfg)
    clamp_input_ranges(model, hwa_cfg.input_range_min)
    return model


def remove_hwa(model: nn.Module, fold_output_scales: bool = True) -> nn.Module:
    """Remove the weight-noise hooks; clipped weights and learned ranges stay.

    Learned output scales are folded into the weights (W_i ← s_i·W_i, exact in ideal
    math; the tile normalization then sees the scaled weights) and their Parameter and
    hook removed, so the state_dict has nn.Linear's keys again. With
    `fold_output_scales=False` they stay as they are (Parameter and hook).
    """
    for _, layer in _require_analog(model, "remove_hwa"):
        layer.weight_noise = None
        layer._train_noise_pool = None
        if fold_output_scales:
            _drop_output_scale(layer, fold=True)
    return model


@torch.no_grad()
def clip_weights(model: nn.Module, hwa_cfg: HWAConfig) -> nn.Module:
    """Clip every AnalogLinear weight in place per `hwa_cfg.clip` (no-op when None).
    "fixed": |W| ≤ clip_value. "sigma": |W| ≤ clip_sigma·std(W), the population std of the
    layer (granularity "layer") or of each output column = weight row ("column"), before
    clipping."""
    _check_cfg(hwa_cfg, "clip_weights")
    layers = _require_analog(model, "clip_weights")
    if hwa_cfg.clip is None:
        return model
    for w in _unique(layer.weight for _, layer in layers):
        if hwa_cfg.clip == "fixed":
            w.clamp_(-hwa_cfg.clip_value, hwa_cfg.clip_value)
            continue
        if hwa_cfg.clip_granularity == "column":
            bound = w.std(dim=1, correction=0, keepdim=True).mul_(hwa_cfg.clip_sigma)
        else:
            bound = w.std(correction=0).mul_(hwa_cfg.clip_sigma)
        torch.minimum(w, bound, out=w)
        torch.maximum(w, -bound, out=w)
    return model


@torch.no_grad()
def clamp_input_ranges(model: nn.Module, minimum: float) -> nn.Module:
    """Keep every DAC range ≥ `minimum` (a learned range must never reach 0)."""
    for p in input_range_parameters(model):
        p.clamp_(min=minimum)
    return model


def hwa_after_step(hwa_cfg: HWAConfig) -> Callable[[nn.Module], None]:
    """`after_step(model)` for `analogformer.training.finetune.finetune`: clip weights and keep
    ranges positive after every optimizer step."""
    _check_cfg(hwa_cfg, "hwa_after_step")

    def after_step(model: nn.Module) -> None:
        clip_weights(model, hwa_cfg)
        clamp_input_ranges(model, hwa_cfg.input_range_min)

    return after_step


def __getattr__(name: str):
    # HWACallback (hf_trainer.py) is built on first use so importing this module does not import transformers
    if name == "HWACallback":
        from .hf_trainer import trainer_classes
        return trainer_classes()["HWACallback"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
