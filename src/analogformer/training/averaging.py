"""Weight averaging for fine-tuning: an exponential moving average of the trainable parameters.

`finetune` keeps one when `FinetuneConfig.ema_decay` is set: after every optimizer step
``ema <- d * ema + (1 - d) * params``, starting from the weights training starts from. The
average is a convex combination of states that all satisfy the per-step constraints
(pruning masks re-applied, weights clipped), so it satisfies them too. `swapped()` lends
the averaged weights to the model for a dev evaluation and puts the live ones back.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightAverage:
    """EMA of ``model``'s trainable parameters (``requires_grad``), in the parameters' dtype."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (once per optimizer step)."""
        for a, p in zip(self.average, self.params):
            a.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the model's parameters with the average (the end of training)."""
        for p, a in zip(self.params, self.average):
            p.copy_(a)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its live weights after."""
        with torch.no_grad():
            live = [p.detach().clone() for p in self.params]
            self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live):
                    p.copy_(v)
