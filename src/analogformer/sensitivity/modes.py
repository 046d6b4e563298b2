"""How one layer is made noisy: a registry (`MODES`), one entry per mode.

* white-noise modes (seed 004: "white noise of std 1 on one layer at a time"): Gaussian noise
  on the layer's **weights** (drawn once per device instance, kept for the whole evaluation)
  or on its **outputs** (drawn afresh at every forward), its std either relative — `std` ×
  max|W| of the layer for weights (the scale of aihwkit's and seed 002's weight noise),
  `std` × the rms of that output for outputs — or absolute (`std` itself, seed 004's way);
* "tiles": the full tile model (the study's `AnalogConfig`: PCM devices, DAC, ADC, drift,
  compensation) on that layer alone, read at a chosen time; embeddings cannot go on tiles.

A white-noise mode is a context manager `perturb(module, std, generator)`: on entry the layer is
noisy, on exit it is exactly as before (weights restored from a copy, hooks removed).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from .layers import weight_of


@dataclass(frozen=True)
class Mode:
    """One entry of `MODES`."""

    label: str
    describe: str
    perturb: Optional[Callable] = None
    """(module, std, generator) -> context manager; None for "tiles" (run through the sweep)."""
    uses_std: bool = True


@contextlib.contextmanager
def _weights(module: nn.Module, std: float, generator: torch.Generator, relative: bool):
    w = weight_of(module)
    saved = w.detach().clone()
    scale = float(saved.abs().max()) if relative else 1.0
    noise = torch.randn(saved.shape, generator=generator, dtype=torch.float32).to(saved.dtype)
    with torch.no_grad():
        w.add_(noise * (std * scale))
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(saved)


@contextlib.contextmanager
def _outputs(module: nn.Module, std: float, generator: torch.Generator, relative: bool):
    def hook(mod, args, out):
        noise = torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.dtype)
        scale = out.detach().float().pow(2).mean().sqrt().item() if relative else 1.0
        return out + noise * (std * scale)
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


MODES: Dict[str, Mode] = {
    "weights": Mode("weight noise (× max|W|)", "W + N(0, (std · max|W| of the layer)²), one draw per instance",
                    lambda m, s, g: _weights(m, s, g, True)),
    "weights-absolute": Mode("weight noise (absolute)", "W + N(0, std²), one draw per instance",
                             lambda m, s, g: _weights(m, s, g, False)),
    "outputs": Mode("output noise (× rms)", "y + N(0, (std · rms of y)²), fresh at every forward",
                    lambda m, s, g: _outputs(m, s, g, True)),
    "outputs-absolute": Mode("output noise (absolute)", "y + N(0, std²), fresh at every forward",
                             lambda m, s, g: _outputs(m, s, g, False)),
    "tiles": Mode("tiles (this layer alone)", "the study's tile model on this layer only, read at t",
                  None, uses_std=False),
}


def check_modes(names) -> list:
    """`names` as a list of registered modes, or a ValueError listing them."""
    if isinstance(names, str) or not names:
        raise ValueError(f"sensitivity modes must be a non-empty list of {list(MODES)}, got {names!r}")
    bad = [n for n in names if n not in MODES]
    if bad:
        raise ValueError(f"unknown sensitivity mode {bad}; registered: {list(MODES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"sensitivity modes {list(names)} name a mode twice")
    return list(names)
