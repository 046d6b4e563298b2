"""The `pruning:` section of a study config (`PruneStudyConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..config import check_choice, check_positive, fail, from_dict, to_dict
from ..pruning import PruneConfig


@dataclass
class PruneStudyConfig:
    """Prune a fine-tuned model, retrain with the masks held, evaluate it on tiles.

    `prune` is the method whose compacted model goes on tiles (the "pruned" conditions).
    `ratios` (optional) repeats the whole step at each ratio (replacing `prune.ratio`); the
    tile conditions are then named "pruned@<ratio>" per ratio. `baselines` are other
    methods — each a mapping of PruneConfig fields overriding `prune`, e.g.
    [{criterion: magnitude}, {criterion: random}] — pruned and retrained the same way at
    every ratio, for the dense → pruned → retrained comparison (digital only).
    `stages` > 1 prunes gradually: each ratio is reached in `stages` nested steps spread over
    the retraining, scored afresh on the retrained model each time (`pruning.GradualPruner`).
    `control` also retrains the unpruned model with the same recipe (method "none", ratio 0):
    what the retraining alone does to the dense model. `retrain_seeds` > 1 retrains every
    pruned model that many times from the same pruned (and refit) state, with retraining
    seeds `retrain.seed` + 0, 1, …: the "after retraining" cells become mean ± SEM over them
    (on small dev sets the seed moves the result more than the recipe); the model that goes
    on tiles is the first seed's. `progressive` prunes each method in rounds across `ratios`
    (ascending): every ratio after the first starts from the previous ratio's retrained model
    (its first seed), keeps the units removed there and removes the rest afresh — scored on
    that model, refit and retrained toward the dense model as before (progressive compression,
    Ye et al. 2019; seed 000 ch. 3 prunes in rounds). Methods get the suffix "-prog".
    `round_seeds` (progressive only) retrains every round but the last with that many seeds
    instead of `retrain_seeds`: only the first seed's model goes on to the next round, so the
    others there only measure the intermediate ratios (default: `retrain_seeds`).
    """

    prune: PruneConfig = field(default_factory=PruneConfig)
    source: str = "digital"
    calibration_batches: int = 8
    retrain: Dict[str, Any] = field(default_factory=dict)  # FinetuneConfig overrides
    compact: bool = True
    ratios: Optional[Tuple[float, ...]] = None
    baselines: Tuple[Dict[str, Any], ...] = ()
    stages: int = 1
    control: bool = False
    retrain_seeds: int = 1
    progressive: bool = False
    round_seeds: Optional[int] = None

    def __post_init__(self):
        check_choice(self, "source", {"digital", "hwa"})
        check_positive(self, "calibration_batches", integer=True)
        check_positive(self, "stages", integer=True)
        check_positive(self, "retrain_seeds", integer=True)
        self.stages, self.retrain_seeds = int(self.stages), int(self.retrain_seeds)
        if self.round_seeds is not None:
            check_positive(self, "round_seeds", integer=True)
            self.round_seeds = int(self.round_seeds)
            if not self.progressive:
                fail("PruneStudyConfig", "round_seeds", "sets the retraining seeds of the rounds before the "
                                                         "last and needs progressive: true; use retrain_seeds")
        for flag in ("control", "progressive"):
            if not isinstance(getattr(self, flag), bool):
                fail("PruneStudyConfig", flag, f"must be true or false, got {getattr(self, flag)!r}")
        if isinstance(self.prune, dict):
            self.prune = from_dict(PruneConfig, self.prune, prefix="pruning.prune")
        if self.ratios is not None:
            if isinstance(self.ratios, (int, float)):
                self.ratios = [self.ratios]
            if not self.ratios:
                fail("PruneStudyConfig", "ratios", "must be a non-empty list of ratios in [0, 1) or null")
            if self.prune.block_ratios:
                fail("PruneStudyConfig", "ratios", "cannot be combined with prune.block_ratios")
            self.ratios = tuple(self.variant(ratio=r).ratio for r in self.ratios)
            if len(set(self.ratios)) != len(self.ratios):
                fail("PruneStudyConfig", "ratios", f"repeats a ratio: {list(self.ratios)}")
        if isinstance(self.baselines, dict) or not all(isinstance(b, dict) for b in self.baselines):
            fail("PruneStudyConfig", "baselines",
                  "must be a list of mappings of PruneConfig fields, e.g. [{criterion: random}]")
        self.baselines = tuple(dict(b) for b in self.baselines)
        labels = [self.label(self.prune)]
        for b in self.baselines:
            if "ratio" in b or "block_ratios" in b:
                fail("PruneStudyConfig", "baselines", "set ratios in `ratios` / `prune`, not per baseline")
            labels.append(self.label(self.variant(**b)))
        if len(set(labels)) != len(labels):
            fail("PruneStudyConfig", "baselines", f"two methods are the same: {labels}")
        if self.stages > 1 and any(pc.reconstruct for _, pc, _ in self.runs()):
            fail("PruneStudyConfig", "stages", "gradual pruning (stages > 1) cannot be combined "
                                                "with reconstruct (it refits after one-shot pruning); "
                                                "use stages: 1")
        if self.stages > 1 and any(pc.admm_rho is not None for _, pc, _ in self.runs()):
            fail("PruneStudyConfig", "stages", "gradual pruning (stages > 1) cannot be combined "
                                                "with ADMM (admm_rho); use stages: 1")
        if self.progressive:
            if self.ratios is None or len(self.ratios) < 2:
                fail("PruneStudyConfig", "progressive", "prunes in rounds across `ratios`: give at least "
                                                         "two, e.g. ratios: [0.1666667, 0.3333333]")
            if list(self.ratios) != sorted(self.ratios):
                fail("PruneStudyConfig", "progressive", f"needs `ratios` in increasing order (each round "
                                                         f"removes more), got {list(self.ratios)}")
            if self.stages > 1 or any(pc.admm_rho is not None for _, pc, _ in self.runs()):
                fail("PruneStudyConfig", "progressive", "rounds of one-shot pruning cannot be combined with "
                                                         "gradual (stages > 1) or ADMM (admm_rho) pruning")
        if self.retrain_seeds > 1 and (self.stages > 1 or any(pc.admm_rho is not None for _, pc, _ in self.runs())):
            fail("PruneStudyConfig", "retrain_seeds", "several retraining seeds need one-shot pruning "
                                                       "(stages: 1, no admm_rho): gradual and ADMM pruning "
                                                       "choose their masks during the retraining")

    def seeds_at(self, ratio: float) -> int:
        """How many retraining seeds a method gets at `ratio` (`round_seeds` before the last round)."""
        if self.progressive and self.round_seeds is not None and ratio != self.ratios[-1]:
            return self.round_seeds
        return self.retrain_seeds

    def variant(self, **overrides) -> PruneConfig:
        """`prune` with some fields replaced (validated)."""
        return from_dict(PruneConfig, {**to_dict(self.prune), **overrides}, prefix="pruning")

    def label(self, pc: PruneConfig) -> str:
        """A short method name for records and tables: "mac-rows", "random-rows", ..."""
        s = f"{pc.criterion}-{pc.structure}"
        return (s + ("-admm" if pc.admm_rho is not None else "") + ("-global" if pc.scope == "global" else "")
                + (f"-t{pc.tile_multiple}" if pc.tile_multiple else "")
                + ("-ls" if pc.reconstruct else "") + ("-prog" if self.progressive else ""))

    def runs(self):
        """[(label, PruneConfig, is_main)] for every ratio: the main method first."""
        out = []
        for r in self.ratios or (None,):
            extra = {} if r is None else {"ratio": r}
            main = self.variant(**extra)
            out.append((self.label(main), main, True))
            for b in self.baselines:
                v = self.variant(**{**b, **extra})
                out.append((self.label(v), v, False))
        return out
