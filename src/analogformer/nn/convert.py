"""analogize(): replace nn.Linear and HF GPT-2 Conv1D modules by AnalogLinear.

Targets are chosen by type (nn.Linear, transformers' Conv1D) and by the fully-qualified
module name: `cfg.include` regexes (empty = all), `cfg.exclude` regexes (default: the
`nn.targets.DEFAULT_EXCLUDE`: output heads, poolers, embedding projections), and an optional
`filter_fn(module, name) -> bool` like torchao's `quantize_`.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AnalogConfig
from .linear import AnalogLinear
from .targets import analog_matrices, is_analog_matrix, is_conv1d

FilterFn = Callable[[nn.Module, str], bool]


def candidate_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Every (name, module) that could go on analog tiles: nn.Linear and HF Conv1D."""
    return [(n, m) for n, m in model.named_modules() if n and is_analog_matrix(m)]


def select_modules(model: nn.Module, cfg: AnalogConfig,
                   filter_fn: Optional[FilterFn] = None) -> List[str]:
    """Names of the modules `analogize` would convert (already-analog ones included): the
    analog matrices of `nn.targets` under `cfg.include` / `cfg.exclude`, then `filter_fn`."""
    return [t.name for t in analog_matrices(model, cfg.exclude, cfg.include)
            if filter_fn is None or filter_fn(t.module, t.name)]


def analogize(model: nn.Module, cfg: Optional[AnalogConfig] = None,
              filter_fn: Optional[FilterFn] = None) -> nn.Module:
    """Put the model's linear layers on PCM tiles, in place; returns the model.

    Raises ValueError when no module matches (naming the filters and a few candidates).
    Modules that are already AnalogLinear get the new config (re-analogizing is allowed).
    """
    cfg = cfg if cfg is not None else AnalogConfig()
    if not isinstance(cfg, AnalogConfig):
        raise ValueError(f"analogize: cfg must be an AnalogConfig, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"analogize: model must be a torch.nn.Module, got {type(model).__name__}")
    names = select_modules(model, cfg, filter_fn)
    if not names:
        cands = [n for n, _ in candidate_modules(model)]
        raise ValueError(
            "analogize: no module matched; include="
            f"{list(cfg.include)}, exclude={list(cfg.exclude)}, filter_fn={'set' if filter_fn else 'None'}. "
            f"Linear/Conv1D modules in this model: {cands[:8]}{' ...' if len(cands) > 8 else ''}"
            if cands else "analogize: the model has no nn.Linear or Conv1D module to put on tiles")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        mod = getattr(parent, child)
        if isinstance(mod, AnalogLinear):
            new = AnalogLinear.from_linear(mod, cfg, name=name)
            new.input_range = mod.input_range
            new.conv1d_layout = getattr(mod, "conv1d_layout", False)
        else:
            transposed = is_conv1d(mod)
            new = AnalogLinear.from_linear(mod, cfg, name=name, transposed=transposed)
            new.conv1d_layout = transposed  # saved transposed back (`export.digital_state_dict`)
        setattr(parent, child, new)
    return model


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose Parameters are the very ones of `model` (modules and
    buffers copied): `analogize(shared_copy(m), cfg)` converts the copy and leaves `m` as it
    was, without a second copy of the weights (an AnalogLinear keeps its weight Parameter; a
    GPT-2 Conv1D gets its transposed one). The two models then share the weights: training
    one changes the other."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def analog_layers(model: nn.Module) -> List[Tuple[str, AnalogLinear]]:
    """(name, layer) for every AnalogLinear in the model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLinear)]


@contextlib.contextmanager
def ideal_state(model: nn.Module):
    """Inside the block every analog layer computes ``F.linear`` with its live weights: the
    digital model, whatever the periphery, programmed state or HWA noise. Statistics taken
    from data (DAC ranges, attention scales) are collected in this state, so device and
    periphery noise never inflate them (a noisy layer's outputs widen every later layer's
    input distribution: on SmolLM2-135M a `down_proj` range of 597 instead of 58.5)."""
    layers = [layer for _, layer in analog_layers(model)]
    for layer in layers:
        layer.forward = functools.partial(_digital_forward, layer)  # an instance attribute shadows the method
    try:
        yield model
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def _digital_forward(layer, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)
