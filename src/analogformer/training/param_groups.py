"""AdamW parameter groups for training on tiles: DAC ranges apart (no decay, their own rate)."""
from __future__ import annotations

from typing import List, Optional

from torch import nn

from ..nn.convert import analog_layers


def _unique(params) -> List[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def input_range_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The DAC range Parameter of every analog layer (shared ones once)."""
    return _unique(layer.input_range for _, layer in analog_layers(model))


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.01,
                 input_range_lr: Optional[float] = None) -> List[dict]:
    """AdamW groups: matrices with weight decay; biases, LayerNorm and output scales
    (ndim < 2) without; DAC ranges without decay at `input_range_lr` (`lr` when None).
    Only parameters with requires_grad; empty groups are left out."""
    ranges = [p for p in input_range_parameters(model) if p.requires_grad]
    range_ids = {id(p) for p in ranges}
    rest = [p for p in _unique(model.parameters()) if p.requires_grad and id(p) not in range_ids]
    groups = [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay, "lr": lr},
              {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
              {"params": ranges, "weight_decay": 0.0,
               "lr": lr if input_range_lr is None else input_range_lr}]
    return [g for g in groups if g["params"]]
