"""ADMM structured pruning (seed 003; Zhang et al. 2018, Ye et al. 2019).

Minimise task_loss(W) subject to W ∈ S (the structured-sparsity set of a PruneConfig:
`ratio` of the rows / columns / blocks / weights are zero). ADMM splits W = Z, Z ∈ S:

    loss  = task_loss(W) + (ρ/2) Σ_layers ‖W − Z + U‖²_F          (every step)
    Z     ← Π_S(W + U)    (keep the highest-scoring units of W + U, zero the rest)
    U     ← U + W − Z                                              (every k steps)

and ends with a hard prune: masks = the support of Π_S(W), applied to W, then masked
retraining (`PruningMasks.after_step`). The projection ranks units with the configured
criterion evaluated on W + U; for "mac" the scores come from the calibration statistics
and so the projected support is fixed (the MAC score is not a function of W alone).

Usage in a training loop::

    admm = ADMMPruner(model, cfg)                 # cfg.admm_rho set
    loss = task_loss + admm.penalty(model); loss.backward(); opt.step(); admm.step(model)
    masks = admm.finalize(model)                  # then retrain with masks.after_step
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .criteria import mask_context, masks_from_weights
from .mac import MacStats
from .masks import PruningMasks
from .prune_config import PruneConfig
from ..nn.targets import linear_weight


class ADMMPruner:
    """Auxiliary Z (sparse copy) and U (scaled dual) per target matrix of `cfg`."""

    def __init__(self, model: nn.Module, cfg: PruneConfig, stats: Optional[MacStats] = None):
        if cfg.admm_rho is None:
            raise ValueError("ADMMPruner: PruneConfig.admm_rho is None (ADMM off); set it, "
                             "e.g. admm_rho=1e-3")
        self.cfg = cfg
        self.stats = stats
        self.ctx = mask_context(model, cfg)
        self.rho = float(cfg.admm_rho)
        self.steps = 0
        w = self.ctx.weights()
        self.U: Dict[str, torch.Tensor] = {n: torch.zeros_like(v) for n, v in w.items()}
        self.Z: Dict[str, torch.Tensor] = self._project(w)

    def _project(self, v: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # Projection onto S only for the targets themselves: coupling acts at finalize.
        m = masks_from_weights(v, self.ctx.blocks, self.cfg, self.stats)
        return {n: v[n] * m.weight[n].to(v[n].dtype) for n in v}

    def _weights(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        mods = dict(model.named_modules())
        return {n: linear_weight(mods[n]) for n in self.ctx.modules}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """(ρ/2) Σ ‖W − Z + U‖²; add to the task loss before backward()."""
        total = None
        for n, w in self._weights(model).items():
            t = (w - self.Z[n].to(w.dtype) + self.U[n].to(w.dtype)).pow(2).sum()
            total = t if total is None else total + t
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Z ← Π_S(W + U); U ← U + W − Z."""
        w = {n: v.detach() for n, v in self._weights(model).items()}
        self.Z = self._project({n: w[n] + self.U[n] for n in w})
        for n in w:
            self.U[n] += w[n] - self.Z[n]

    def step(self, model: nn.Module) -> bool:
        """Call after every optimizer.step(); updates Z, U every `admm_interval_steps`."""
        self.steps += 1
        if self.steps % self.cfg.admm_interval_steps == 0:
            self.update(model)
            return True
        return False

    @torch.no_grad()
    def distance_to_sparse_set(self, model: nn.Module) -> float:
        """‖W − Π_S(W)‖ / ‖W‖ over all targets: 0 when W is already structurally sparse."""
        w = {n: v.detach() for n, v in self._weights(model).items()}
        p = self._project(w)
        num = sum(float((w[n] - p[n]).pow(2).sum()) for n in w)
        den = sum(float(w[n].pow(2).sum()) for n in w)
        return (num / den) ** 0.5 if den > 0 else 0.0

    @torch.no_grad()
    def primal_residual(self, model: nn.Module) -> float:
        """‖W − Z‖ / ‖W‖, the ADMM convergence measure."""
        w = self._weights(model)
        num = sum(float((w[n].detach() - self.Z[n]).pow(2).sum()) for n in w)
        den = sum(float(w[n].detach().pow(2).sum()) for n in w)
        return (num / den) ** 0.5 if den > 0 else 0.0

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> PruningMasks:
        """Hard prune: masks from Π_S(W) (with FFN coupling), applied to the model."""
        w = {n: v.detach() for n, v in self._weights(model).items()}
        masks = masks_from_weights(w, self.ctx.blocks, self.cfg, self.stats, self.ctx.groups,
                                   self.ctx.shapes, self.ctx.has_bias)
        masks.apply(model)
        return masks
