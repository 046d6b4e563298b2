"""Hard-pruning masks: applied to weights, to gradients, and again after optimizer steps.

A mask is a boolean (out, in) tensor in nn.Linear orientation (True = weight kept) for a
module name; bias masks (out,) are kept for FC1 columns removed with their FC2 rows.
Zeroing gradients alone is not enough to keep pruned weights at zero under AdamW when the
optimizer carries moments from before pruning, so `after_step` (or `attach`) re-applies
the masks after every step; with both, pruned weights are exactly 0 at all times.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..nn.targets import is_conv1d, linear_weight


class PruningMasks:
    """Masks by module name. Usage during retraining::

        masks.apply(model); masks.register_gradient_hooks(model)
        opt.step(); masks.after_step(model)      # or masks.attach(opt, model) once
    """

    def __init__(self, weight: Dict[str, torch.Tensor],
                 bias: Optional[Dict[str, torch.Tensor]] = None):
        self.weight = {k: v.bool() for k, v in weight.items()}
        self.bias = {k: v.bool() for k, v in (bias or {}).items()}
        self._handles: List = []

    # --- inspection -------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"PruningMasks({len(self.weight)} matrices, sparsity={self.sparsity():.4f})"

    def sparsity(self) -> float:
        """Fraction of masked weights over all masked matrices."""
        tot = sum(m.numel() for m in self.weight.values())
        return 0.0 if tot == 0 else sum(int((~m).sum()) for m in self.weight.values()) / tot

    def removed_rows(self, name: str) -> torch.Tensor:
        """Indices of crossbar rows (inputs) whose whole column of W is masked."""
        return (~self.weight[name].any(0)).nonzero().flatten()

    def removed_columns(self, name: str) -> torch.Tensor:
        """Indices of crossbar columns (outputs) whose whole row of W is masked."""
        return (~self.weight[name].any(1)).nonzero().flatten()

    def summary(self) -> Dict[str, Dict[str, int]]:
        return {n: {"weights": m.numel(), "pruned": int((~m).sum()),
                    "rows_removed": len(self.removed_rows(n)),
                    "columns_removed": len(self.removed_columns(n))}
                for n, m in self.weight.items()}

    # --- application ------------------------------------------------------------------
    def _modules(self, model: nn.Module) -> Dict[str, nn.Module]:
        named = dict(model.named_modules())
        missing = [n for n in self.weight if n not in named]
        if missing:
            raise ValueError(f"PruningMasks: modules {missing} are not in "
                             f"{type(model).__name__} (was the model compacted? use the "
                             "masks returned by compact())")
        return {n: named[n] for n in self.weight}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights (and bias entries) in place."""
        for name, mod in self._modules(model).items():
            w = linear_weight(mod)
            m = self.weight[name]
            if tuple(w.shape) != tuple(m.shape):
                raise ValueError(f"PruningMasks: mask of {name!r} is {tuple(m.shape)} but the "
                                 f"weight is {tuple(w.shape)} (out, in)")
            w.mul_(m.to(w.dtype))
            if name in self.bias and mod.bias is not None:
                mod.bias.mul_(self.bias[name].to(mod.bias.dtype))
        return model

    def after_step(self, model: nn.Module) -> None:
        """Re-apply the masks; call after every optimizer.step()."""
        self.apply(model)

    def register_gradient_hooks(self, model: nn.Module) -> List:
        """Multiply gradients of masked weights/biases by the mask (hard pruning)."""
        self.remove_hooks()
        for name, mod in self._modules(model).items():
            m = self.weight[name]
            wm = m.t() if is_conv1d(mod) and not isinstance(mod, nn.Linear) else m
            self._handles.append(mod.weight.register_hook(
                lambda g, wm=wm: g * wm.to(g.dtype)))
            if name in self.bias and mod.bias is not None:
                bm = self.bias[name]
                self._handles.append(mod.bias.register_hook(
                    lambda g, bm=bm: g * bm.to(g.dtype)))
        return self._handles

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module):
        """Register gradient hooks and a post-step hook re-applying the masks; returns the
        optimizer hook handle (call `.remove()` on it and `remove_hooks()` to detach)."""
        self.apply(model)
        self.register_gradient_hooks(model)
        return optimizer.register_step_post_hook(lambda *_a, **_k: self.apply(model))

    # --- persistence ------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {"weight": dict(self.weight), "bias": dict(self.bias)}

    @classmethod
    def from_state_dict(cls, sd) -> "PruningMasks":
        return cls(sd["weight"], sd.get("bias"))

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path) -> "PruningMasks":
        return cls.from_state_dict(torch.load(path, weights_only=True))
