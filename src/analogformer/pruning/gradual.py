"""Gradual (iterative) pruning: reach the target ratio in stages during retraining.

One-shot pruning removes every unit at once and leaves retraining to repair the damage.
Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"; seed 000 prunes in
rounds as well) removes `ratio · k / stages` of the units at stage k, spread evenly over
the retraining steps, and scores the units again on the model as it has been retrained so
far (for "mac" / "activation" with fresh calibration statistics). Units removed at a stage
stay removed (the masks are nested), and the final masks remove exactly as many units as
one-shot pruning at the same ratio.

Usage with `finetune` (or any loop that calls `after_step(model)` after optimizer steps)::

    pruner = GradualPruner(model, cfg, stages=3, total_steps=600, stats_fn=...)
    finetune(model, loader, fcfg, after_step=pruner.after_step)
    pruner.remove_hooks(); masks = pruner.masks
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional

from torch import nn

from .criteria import prune
from .mac import MacStats
from .masks import PruningMasks
from .prune_config import PruneConfig


def stage_config(cfg: PruneConfig, fraction: float) -> PruneConfig:
    """`cfg` with every ratio (and block ratio) scaled by `fraction` of the way."""
    ratios = None if cfg.block_ratios is None else {b: r * fraction for b, r in cfg.block_ratios.items()}
    return replace(cfg, ratio=cfg.ratio * fraction, block_ratios=ratios)


class GradualPruner:
    """Prunes `model` to `cfg`'s ratio in `stages` nested steps over `total_steps` optimizer
    steps: stage 1 at construction, stage k at step round((k-1)·total_steps/stages).

    Between stages the current masks are held (gradients masked, weights re-zeroed after
    every step). `stats_fn(model)` returns the calibration statistics the criterion needs
    (None for weight-only criteria); it is called on the model at each stage.
    """

    def __init__(self, model: nn.Module, cfg: PruneConfig, stages: int, total_steps: int,
                 stats_fn: Callable[[nn.Module], Optional[MacStats]] = lambda _m: None):
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"GradualPruner: stages must be an int >= 1, got {stages!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
            raise ValueError(f"GradualPruner: total_steps must be an int >= 0, got {total_steps!r}")
        if cfg.admm_rho is not None:
            raise ValueError("GradualPruner: ADMM (admm_rho) is a schedule of its own "
                             "(pruning.schedule: {kind: admm}), not a gradual one")
        self.cfg, self.stages, self.stats_fn = cfg, stages, stats_fn
        # stage k (0-based) starts after this many optimizer steps
        self.schedule: List[int] = [round(k * total_steps / stages) for k in range(stages)]
        self.stage = 0
        self.steps = 0
        self.masks: PruningMasks = prune(model, self._cfg_at(0), stats_fn(model))
        self.masks.register_gradient_hooks(model)
        while self.stage + 1 < stages and self.schedule[self.stage + 1] <= 0:
            self._advance(model)

    def _cfg_at(self, stage: int) -> PruneConfig:
        return stage_config(self.cfg, (stage + 1) / self.stages)

    @property
    def final(self) -> bool:
        """True once the target ratio is reached (the last stage)."""
        return self.stage == self.stages - 1

    @property
    def ratio(self) -> float:
        return self._cfg_at(self.stage).ratio

    def _advance(self, model: nn.Module) -> None:
        self.stage += 1
        stats = self.stats_fn(model)
        masks = prune(model, self._cfg_at(self.stage), stats, previous=self.masks)
        self.masks.remove_hooks()
        self.masks = masks
        masks.register_gradient_hooks(model)

    def after_step(self, model: nn.Module) -> None:
        """Call after every optimizer step: holds the masks, moves to the next stage on time."""
        self.steps += 1
        self.masks.apply(model)
        while self.stage + 1 < self.stages and self.steps >= self.schedule[self.stage + 1]:
            self._advance(model)

    def remove_hooks(self) -> None:
        self.masks.remove_hooks()
