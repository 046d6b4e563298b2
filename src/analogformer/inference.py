"""Program / drift / compensate a whole analogized model; input-range calibration.

Every random draw comes from per-layer `torch.Generator`s seeded from (seed, layer name)
(`seeding.derive_seed`), so `program(model, seed)` is reproducible, independent of other
seeds, and the same layer gets the same draw whatever else the model contains (a layer left
digital, or another one added, changes no other layer's devices).
"""
from __future__ import annotations

import ctypes
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

import torch
from torch import nn

from .device.conductance import group_amax
from .nn.convert import analog_layers, ideal_state
from .seeding import derive_seed

_POOL = "<output-noise pool>"  # the stream name of the model's shared output-noise pool


def _require_analog(model: nn.Module, verb: str):
    layers = analog_layers(model)
    if not layers:
        raise ValueError(f"{verb}: the model has no AnalogLinear layers; call "
                         "analogformer.analogize(model, cfg) first")
    return layers


def _each_layer(fn, items) -> None:
    """fn(item) for every item, on up to torch.get_num_threads() Python threads. PyTorch's
    CPU random draws are single-threaded, and every layer draws from its own generator,
    so layers programmed or read side by side give the very same tensors as in sequence,
    in about 1/threads of the time."""
    items = list(items)
    workers = min(len(items), torch.get_num_threads())
    if workers <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(fn, it) for it in items]:
            f.result()  # re-raises a layer's error here


def _release_free_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`; nothing elsewhere).
    Programming and reading leave several weight-sized temporaries per layer; with the
    allocator tuned for speed (`runtime.tune_allocator`: no trimming below 2 GiB) their freed
    pages stay in the process, and on MiniLM made a third of a sweep's peak RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def layer_generator(seed: int, name: str, device=None) -> torch.Generator:
    """The generator of layer `name` (its module name) for device instance / read `seed`, on
    `device` (default CPU; draws on a GPU need a generator there, whose stream differs)."""
    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(derive_seed(int(seed), str(name)))
    return g


def program(model: nn.Module, seed: int = 0) -> nn.Module:
    """Program every analog layer: conductances with programming noise, drift exponents,
    and the compensation reference. A new seed is an independent device instance."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"program: seed must be an int, got {seed!r}")
    layers = _require_analog(model, "program")
    pool_sizes = [l.config.adc.noise_pool_size for _, l in layers
                  if l.config.adc.output_noise_std is not None and l.config.adc.noise_pool_size]
    pool = None
    if pool_sizes:  # one output-noise pool per model and device instance, on its device and in its dtype
        w = layers[0][1].weight
        pool = torch.randn(max(pool_sizes), generator=layer_generator(seed, _POOL, w.device), device=w.device)
        pool = pool.to(w.dtype) if w.dtype.is_floating_point else pool

    def program_layer(item):
        name, layer = item
        # the pool first: the compensation reference read of `program` takes its output noise
        layer._noise_pool = pool if layer.config.adc.noise_pool_size else None
        layer.program(layer_generator(seed, name, layer.weight.device))
        _release_free_heap()  # per layer: the temporaries of one layer, not of all, at the peak

    _each_layer(program_layer, layers)
    return model


def drift(model: nn.Module, t_seconds: float, read_seed: Optional[int] = None) -> nn.Module:
    """Conductances at `t_seconds` after programming, with drift compensation where the
    layer's config enables it.

    Each call draws fresh 1/f read noise from the generators `program` seeded. With
    `read_seed`, the generators are re-seeded from (read_seed, layer) first, so this read
    (and the output noise of the forwards that follow) is reproducible on its own, whatever
    reads came before: that is how an interrupted sweep resumes with identical draws.
    """
    if isinstance(t_seconds, bool) or not isinstance(t_seconds, (int, float)) \
            or not math.isfinite(t_seconds) or t_seconds < 0:
        raise ValueError(f"drift: t_seconds must be a finite number >= 0, got {t_seconds!r}")
    if read_seed is not None:
        reseed_noise(model, read_seed)
    t = float(t_seconds)
    def drift_layer(layer):
        layer.drift(t)
        _release_free_heap()

    _each_layer(drift_layer, [layer for _, layer in _require_analog(model, "drift")])
    return model


def reseed_noise(model: nn.Module, seed: int) -> nn.Module:
    """Re-seed the per-layer generators of a programmed model (read noise, output noise)
    from (seed, layer name); the programmed conductances are untouched."""
    for name, layer in _require_analog(model, "reseed_noise"):
        if layer.programmed:
            layer.set_generator(layer_generator(seed, name, layer.weight.device))
    return model


def set_compensation(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch drift compensation on/off for the current read without re-reading."""
    for _, layer in _require_analog(model, "set_compensation"):
        layer.config.compensation.enabled = bool(enabled)
        layer.set_compensation(bool(enabled))
    return model


def unprogram(model: nn.Module) -> nn.Module:
    """Drop all programmed state: the model computes with its live weights again."""
    for _, layer in analog_layers(model):
        layer.unprogram()
    return model


reset = unprogram


@torch.no_grad()
def calibrate_input_ranges(model: nn.Module, batches: Iterable, percentile: Optional[float] = 99.99,
                           forward: Optional[callable] = None) -> dict:
    """Set each layer's DAC range r from the activations it sees on `batches`, with the model
    in its ideal (digital) state (`ideal_state`): the ranges are those of the model as
    trained, never widened by device or periphery noise.

    r = the `percentile` of |x| over all calibration inputs (max |x| when None), the
    largest over batches. `batches` yields dicts of model kwargs (or tensors, passed as the
    first argument); `forward(model, batch)` overrides how a batch is run. Returns
    {layer name: r}.
    """
    if percentile is not None and not 0 < percentile <= 100:
        raise ValueError(f"calibrate_input_ranges: percentile must be in (0, 100], got {percentile!r}")
    layers = _require_analog(model, "calibrate_input_ranges")
    stats = {name: 0.0 for name, _ in layers}
    hooks = []

    def make_hook(name):
        def hook(mod, args):
            a = args[0].detach().abs().float().flatten()
            if percentile is None or a.numel() < 2:
                v = a.max().item()
            else:
                k = max(1, min(a.numel(), int(math.ceil(a.numel() * percentile / 100.0))))
                v = a.kthvalue(k).values.item()
            stats[name] = max(stats[name], v)
        return hook

    for name, layer in layers:
        hooks.append(layer.register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with ideal_state(model):
            n = 0
            for batch in batches:
                if forward is not None:
                    forward(model, batch)
                elif isinstance(batch, dict):
                    model(**batch)
                else:
                    model(batch)
                n += 1
        if n == 0:
            raise ValueError("calibrate_input_ranges: `batches` yielded no batch")
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, layer in layers:
        layer.input_range.data.fill_(max(stats[name], 1e-6))
    return stats


_WEIGHT_NOISE = "<weight noise>"  # the stream name of additive weight noise


@torch.no_grad()
def add_weight_noise(model: nn.Module, std: float, seed: int) -> nn.Module:
    """Add Gaussian noise to the current read weights of every programmed analog layer:
    N(0, (std · max|W| of the tile)²) per weight — aihwkit's additive weight noise relative to
    the tile's actual max |W| (`WeightModifierType.ADD_NORMAL`, `rel_to_actual_wmax`); 0.0175
    is seed 002's "standard PCM weight noise". Drawn from (seed, layer name), so each layer's
    draw is reproducible on its own; the next `drift` reads the conductances afresh (noise gone).
    The drift-compensation factor of the read is kept (zero-mean noise leaves it unbiased)."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
        raise ValueError(f"add_weight_noise: std must be a finite number >= 0 (relative to the tile's max |W|), "
                         f"got {std!r}")
    for name, layer in _require_analog(model, "add_weight_noise"):
        if not layer.programmed:
            raise ValueError(f"add_weight_noise: layer {name!r} is not programmed; call program(model, seed) first")
        # read weights are normalized per (row tile, column) by _w_scale; the tile's max |W|
        # is the max of those scales over the tile's columns (= the scale itself per tile)
        rel = group_amax(layer._w_scale, layer.col_sizes) / layer._w_scale  # (K, out)
        dev = layer._w_read.device
        g = layer_generator(derive_seed(int(seed), _WEIGHT_NOISE), name, dev)
        noise = torch.randn(layer._w_read.shape, generator=g, dtype=layer._w_read.dtype, device=dev)
        noise.mul_(rel.unsqueeze(1) * float(std) * layer._w_read_scale).mul_(layer._valid_rows())
        layer._w_read.add_(noise)
        layer.invalidate()
    return model
