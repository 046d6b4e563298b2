"""analogize(): replace nn.Linear and HF GPT-2 Conv1D modules by AnalogLinear.

Targets are chosen by type (nn.Linear, transformers' Conv1D) and by the fully-qualified
module name: `cfg.include` regexes (empty = all), `cfg.exclude` regexes (default: the
output heads: classifier, lm_head, pooler dense, qa_outputs, score), and an optional
`filter_fn(module, name) -> bool` like torchao's `quantize_`.
"""
from __future__ import annotations

import re
from typing import Callable, List, Optional, Tuple

from torch import nn

from ..config import AnalogConfig
from .linear import AnalogLinear

FilterFn = Callable[[nn.Module, str], bool]


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return None
    return Conv1D


def _compile(patterns, field: str) -> List[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"AnalogConfig.{field}: invalid regex {p!r}: {e}") from None
    return out


def candidate_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Every (name, module) that could go on analog tiles: nn.Linear and HF Conv1D."""
    conv1d = _conv1d_type()
    kinds = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and n]


def select_modules(model: nn.Module, cfg: AnalogConfig,
                   filter_fn: Optional[FilterFn] = None) -> List[str]:
    """Names of the modules `analogize` would convert (already-analog ones included)."""
    include = _compile(cfg.include, "include")
    exclude = _compile(cfg.exclude, "exclude")
    names = []
    for name, mod in candidate_modules(model):
        if include and not any(p.search(name) for p in include):
            continue
        if any(p.search(name) for p in exclude):
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            continue
        names.append(name)
    return names


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
    conv1d = _conv1d_type()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        mod = getattr(parent, child)
        if isinstance(mod, AnalogLinear):
            new = AnalogLinear.from_linear(mod, cfg, name=name)
            new.input_range = mod.input_range
        else:
            transposed = conv1d is not None and isinstance(mod, conv1d)
            new = AnalogLinear.from_linear(mod, cfg, name=name, transposed=transposed)
        setattr(parent, child, new)
    return model


def analog_layers(model: nn.Module) -> List[Tuple[str, AnalogLinear]]:
    """(name, layer) for every AnalogLinear in the model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLinear)]
