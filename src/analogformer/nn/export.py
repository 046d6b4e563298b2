"""The state dict an analogized model saves as a plain HF checkpoint.

`analogize` keeps HF state-dict keys (AnalogLinear subclasses nn.Linear), but an AnalogLinear
also holds its DAC range (`input_range`), and a GPT-2 `Conv1D` was transposed to the Linear
layout at conversion. `digital_state_dict` undoes both, so `save_pretrained(state_dict=...)`
writes what the original architecture loads with `from_pretrained` (identical logits);
the DAC ranges belong in a file of their own (a study writes `input_ranges.json`).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .linear import AnalogLinear

__all__ = ["digital_state_dict"]


def digital_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """`model.state_dict()` in the layout of the model before `analogize`: each AnalogLinear
    contributes only `weight` (transposed back for a converted Conv1D) and `bias`."""
    sd = model.state_dict()
    for name, layer in model.named_modules():
        if not isinstance(layer, AnalogLinear):
            continue
        prefix = f"{name}." if name else ""
        for key in [k for k in sd if k.startswith(prefix) and "." not in k[len(prefix):]]:
            if key[len(prefix):] not in ("weight", "bias"):
                del sd[key]
        if getattr(layer, "conv1d_layout", False):  # set by `analogize` on a converted Conv1D
            sd[prefix + "weight"] = sd[prefix + "weight"].t().contiguous()
    return sd
