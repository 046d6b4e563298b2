"""The layers a sensitivity analysis perturbs, one at a time, and their weight statistics.

Every analog matrix of the config (`AnalogConfig.include` / `exclude`), and by default also
the layers that stay digital: the embedding tables and the digital nn.Linear modules (the
output head, the pooler). Each gets a place in the heat-map: its *type* (the module name
without the transformer-layer prefix, e.g. "attention.self.query") and its transformer
layer ("block" index); layers outside the transformer layers go to the column "in" (before
the first layer: embeddings) or "out" (after the last: head, pooler, final norm).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..config import AnalogConfig
from ..nn.convert import candidate_modules, select_modules
from ..nn.targets import LAYER_INDEX, linear_weight


@dataclass(frozen=True)
class Layer:
    """One perturbed layer. `kind`: "analog" (on tiles in the config), "digital" (a linear layer
    the config keeps digital, e.g. the head) or "embedding"."""

    name: str
    kind: str
    type: str
    """The heat-map row: the name without the model prefix and transformer-layer index."""
    column: str
    """The heat-map column: the transformer-layer index ("0", "1", …), "in" or "out"."""

    @property
    def matrix(self) -> bool:
        """Whether the layer is a matrix multiply (can go on tiles)."""
        return self.kind != "embedding"


def weight_of(module: nn.Module) -> torch.Tensor:
    """The layer's weight, (out, in) for a matrix, (vocabulary, dim) for an embedding."""
    return module.weight if isinstance(module, nn.Embedding) else linear_weight(module)


def _placement(name: str, first_block_seen: bool):
    m = LAYER_INDEX.search("." + name + ".")
    if m:
        return name[m.end() - 1:], m.group(1)
    short = re.sub(r"^(bert|roberta|distilbert|albert|mobilebert|electra|transformer|model)\.", "", name)
    return short, "out" if first_block_seen else "in"


def find_layers(model: nn.Module, cfg: AnalogConfig, digital: bool = True,
                select: Optional[str] = None) -> List[Layer]:
    """The layers of `model` a sensitivity analysis perturbs, in module order: the analog
    matrices of `cfg`, and with `digital` the embeddings and the digital linear layers.
    `select` (a regex on module names) keeps only the layers it matches."""
    analog = set(select_modules(model, cfg))
    linear = {n for n, _ in candidate_modules(model)}
    pat = None
    if select is not None:
        try:
            pat = re.compile(select)
        except re.error as e:
            raise ValueError(f"sensitivity layers: invalid regex {select!r}: {e}") from None
    out, seen_block = [], False
    for name, mod in model.named_modules():
        seen_block = seen_block or bool(LAYER_INDEX.search("." + name + "."))
        if name in analog:
            kind = "analog"
        elif digital and name in linear:
            kind = "digital"
        elif digital and isinstance(mod, nn.Embedding):
            kind = "embedding"
        else:
            continue
        typ, col = _placement(name, seen_block)
        if pat is None or pat.search(name):
            out.append(Layer(name, kind, typ, col))
    if not out:
        raise ValueError(f"sensitivity: no layer to perturb (select={select!r}, digital layers "
                         f"{'included' if digital else 'excluded'}); the analog matrices of this model are "
                         f"{sorted(analog)[:6]}{' ...' if len(analog) > 6 else ''}")
    return out


def weight_stats(w: torch.Tensor) -> Dict[str, float]:
    """std, excess kurtosis (scipy, Fisher: 0 for a Gaussian), max|w| / rms and max|w| of a weight."""
    from scipy.stats import kurtosis

    x = w.detach().double().flatten().cpu().numpy()
    rms = float(np.sqrt(np.mean(x * x)))
    mx = float(np.abs(x).max())
    return {"std": float(x.std()), "kurtosis": float(kurtosis(x, fisher=True)),
            "max_over_rms": mx / rms if rms > 0 else math.nan, "max_abs": mx}
