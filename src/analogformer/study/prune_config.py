"""The `pruning:` section of a study config (`PruneStudyConfig`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..config import check_choice, check_positive, fail, from_dict, to_dict
from ..pruning import (ADMMSchedule, GradualSchedule, OneShotSchedule, ProgressiveSchedule, PruneConfig,
                       Schedule, check_supported, schedule_from_dict)

_ADMM_KEYS = ("admm_rho", "admm_interval_steps")
_ADMM_INTERVAL_DEFAULT = PruneConfig.__dataclass_fields__["admm_interval_steps"].default


@dataclass
class PruneStudyConfig:
    """Prune a fine-tuned model, retrain with the masks held, evaluate it on tiles."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    """The method whose compacted model goes on tiles (the "pruned" conditions)."""
    source: str = "digital"
    """Which fine-tuned model is pruned: "digital" or "hwa"."""
    calibration_batches: int = 8
    """Unlabelled training batches of the calibration statistics (and least-squares refit)."""
    retrain: Dict[str, Any] = field(default_factory=dict)
    """FinetuneConfig overrides of the retraining recipe (on top of `finetune`)."""
    compact: bool = True
    """Physically remove the pruned FFN units from the saved model."""
    ratios: Optional[Tuple[float, ...]] = None
    """Repeat the whole step at each ratio (replacing `prune.ratio`); the tile conditions are
    then named "pruned@<ratio>" per ratio. None = `prune.ratio` only."""
    baselines: Tuple[Dict[str, Any], ...] = ()
    """Other methods, each a mapping of PruneConfig fields overriding `prune`, e.g.
    [{criterion: magnitude}, {criterion: random}], pruned and retrained the same way at every
    ratio, for the dense → pruned → retrained comparison (digital only)."""
    schedule: Any = None
    """How the pruned model is reached, a tagged mapping (`pruning.schedule`): {kind: oneshot}
    (default), {kind: gradual, stages: 3}, {kind: progressive, round_seeds: 1} or
    {kind: admm, rho: 0.001, interval_steps: 10}; shared by every method."""
    control: bool = False
    """Also retrain the unpruned model with the same recipe (method "none", ratio 0): what the
    retraining alone does to the dense model."""
    retrain_seeds: int = 1
    """Retrain every pruned model that many times from the same pruned (and refit) state, with
    seeds `retrain.seed` + 0, 1, …: the "after retraining" cells become mean ± SEM; the model
    on tiles is the first seed's."""
    stages: int = 1
    """Deprecated: `schedule: {kind: gradual, stages: N}`. Read for one release; written back
    mirroring `schedule` (1 unless gradual) so older study folders resume."""
    progressive: bool = False
    """Deprecated: `schedule: {kind: progressive}`. Read for one release; written back
    mirroring `schedule`."""
    round_seeds: Optional[int] = None
    """Deprecated: `schedule: {kind: progressive, round_seeds: N}`. Read for one release;
    written back mirroring `schedule`."""

    def __post_init__(self):
        check_choice(self, "source", {"digital", "hwa"})
        check_positive(self, "calibration_batches", integer=True)
        check_positive(self, "retrain_seeds", integer=True)
        self.retrain_seeds = int(self.retrain_seeds)
        for flag in ("control", "progressive"):
            if not isinstance(getattr(self, flag), bool):
                fail("PruneStudyConfig", flag, f"must be true or false, got {getattr(self, flag)!r}")
        if isinstance(self.prune, dict):
            self.prune = from_dict(PruneConfig, self.prune, prefix="pruning.prune")
        self._resolve_schedule()
        self._check_ratios()
        self._check_baselines()
        try:
            self.schedule.check(self.ratios)
        except ValueError as e:
            fail("PruneStudyConfig", "schedule", str(e))
        self._check_options()

    # ------------------------------------------------------------------ validation

    def _check_ratios(self) -> None:
        if self.ratios is None:
            return
        if isinstance(self.ratios, (int, float)):
            self.ratios = [self.ratios]
        if not self.ratios:
            fail("PruneStudyConfig", "ratios", "must be a non-empty list of ratios in [0, 1) or null")
        if self.prune.block_ratios:
            fail("PruneStudyConfig", "ratios", "cannot be combined with prune.block_ratios")
        self.ratios = tuple(self.variant(ratio=r).ratio for r in self.ratios)
        if len(set(self.ratios)) != len(self.ratios):
            fail("PruneStudyConfig", "ratios", f"repeats a ratio: {list(self.ratios)}")

    def _check_baselines(self) -> None:
        if isinstance(self.baselines, dict) or not all(isinstance(b, dict) for b in self.baselines):
            fail("PruneStudyConfig", "baselines",
                 "must be a list of mappings of PruneConfig fields, e.g. [{criterion: random}]")
        self.baselines = tuple(dict(b) for b in self.baselines)
        labels = [self.label(self.prune)]
        for b in self.baselines:
            if "ratio" in b or "block_ratios" in b:
                fail("PruneStudyConfig", "baselines", "set ratios in `ratios` / `prune`, not per baseline")
            for k in _ADMM_KEYS:
                if k in b and b[k] != getattr(self.prune, k):
                    fail("PruneStudyConfig", "baselines", f"{k} belongs to the schedule every method "
                         f"shares: set pruning.schedule (e.g. {{kind: admm, rho: 0.001}}), not per baseline")
            labels.append(self.label(self.variant(**b)))
        if len(set(labels)) != len(labels):
            fail("PruneStudyConfig", "baselines", f"two methods are the same: {labels}")

    def _check_options(self) -> None:
        """The one compatibility check: options the schedule must support."""
        where = "prune.reconstruct" if self.prune.reconstruct else next(
            (f"baselines[{i}].reconstruct" for i, b in enumerate(self.baselines) if b.get("reconstruct")), None)
        if where is not None:
            check_supported(self.schedule, "reconstruct", f"PruneStudyConfig.{where}", "true")
        if self.retrain_seeds > 1:
            check_supported(self.schedule, "retrain_seeds", "PruneStudyConfig.retrain_seeds", self.retrain_seeds)

    # ------------------------------------------------------------------ deprecated keys

    def _legacy(self) -> List[Tuple[str, str, Schedule]]:
        """[(old key, "key: value", the schedule it means)] for the deprecated keys given."""
        out = []
        if self.stages != 1:
            check_positive(self, "stages", integer=True)
            self.stages = int(self.stages)
            out.append(("stages", f"pruning.stages: {self.stages}", GradualSchedule(stages=self.stages)))
        if self.progressive or self.round_seeds is not None:
            try:
                prog = ProgressiveSchedule(round_seeds=self.round_seeds)
            except ValueError as e:
                fail("PruneStudyConfig", "round_seeds", str(e))
            if self.progressive:
                out.append(("progressive", "pruning.progressive: true", prog))
            if self.round_seeds is not None:
                out.append(("round_seeds", f"pruning.round_seeds: {self.round_seeds}", prog))
        if self.prune.admm_rho is not None:
            admm = ADMMSchedule(rho=self.prune.admm_rho, interval_steps=self.prune.admm_interval_steps)
            out.append(("prune.admm_rho", f"pruning.prune.admm_rho: {self.prune.admm_rho:g}", admm))
            if self.prune.admm_interval_steps != _ADMM_INTERVAL_DEFAULT:
                out.append(("prune.admm_interval_steps",
                            f"pruning.prune.admm_interval_steps: {self.prune.admm_interval_steps}", admm))
        return out

    def _resolve_schedule(self) -> None:
        """`schedule` from its mapping or from the deprecated keys (with a DeprecationWarning);
        then the deprecated keys mirror it (they are still written to config.yaml)."""
        given = None if self.schedule is None else schedule_from_dict(self.schedule)
        legacy = self._legacy()
        kinds = {s.kind: (text, s) for _, text, s in legacy}
        if len(kinds) > 1:
            (t1, s1), (t2, s2) = list(kinds.values())[:2]
            fail("PruneStudyConfig", "schedule", f"{t1} ({s1.title}) and {t2} ({s2.title}) choose two "
                 f"schedules; keep one: pruning.schedule: {s1.spelling()} or pruning.schedule: {s2.spelling()}")
        if self.round_seeds is not None and not self.progressive \
                and not isinstance(given, ProgressiveSchedule):
            fail("PruneStudyConfig", "round_seeds", "sets the retraining seeds of the rounds before the last "
                 "and needs progressive: true — now pruning.schedule: {kind: progressive, round_seeds: "
                 f"{self.round_seeds}}}; or use retrain_seeds")
        for key, text, s in legacy:
            if given is not None and s != given:
                fail("PruneStudyConfig", "schedule", f"{text} (deprecated) means pruning.schedule: "
                     f"{s.spelling()}, which conflicts with pruning.schedule: {given.spelling()}; "
                     f"remove pruning.{key}")
            if given is None:
                warnings.warn(f"pruning.{key} is deprecated: use pruning.schedule: {s.spelling()}",
                              DeprecationWarning, stacklevel=4)
        if self.prune.admm_rho is None and self.prune.admm_interval_steps != _ADMM_INTERVAL_DEFAULT \
                and not isinstance(given, ADMMSchedule):
            warnings.warn("pruning.prune.admm_interval_steps is deprecated and does nothing without ADMM: "
                          "use pruning.schedule: {kind: admm, rho: ..., interval_steps: "
                          f"{self.prune.admm_interval_steps}}}", DeprecationWarning, stacklevel=4)
        self.schedule = given or (legacy[0][2] if legacy else OneShotSchedule())
        self._mirror()

    def _mirror(self) -> None:
        """The deprecated keys as an older analogformer would write this schedule."""
        s = self.schedule
        self.stages = s.stages if isinstance(s, GradualSchedule) else 1
        self.progressive = isinstance(s, ProgressiveSchedule)
        self.round_seeds = s.round_seeds if isinstance(s, ProgressiveSchedule) else None
        if isinstance(s, ADMMSchedule):
            self.prune = s.prune_config(self.prune)

    # ------------------------------------------------------------------ methods and runs

    def seeds_at(self, ratio: float) -> int:
        """How many retraining seeds a method gets at `ratio` (the schedule decides)."""
        return self.schedule.seeds_at(ratio, self.ratios, self.retrain_seeds)

    def variant(self, **overrides) -> PruneConfig:
        """`prune` with some fields replaced (validated)."""
        return from_dict(PruneConfig, {**to_dict(self.prune), **overrides}, prefix="pruning")

    def label(self, pc: PruneConfig) -> str:
        """A short method name for records and tables: "mac-rows", "random-rows", ..."""
        options = (("-global" if pc.scope == "global" else "") + (f"-t{pc.tile_multiple}" if pc.tile_multiple else "")
                   + ("-ls" if pc.reconstruct else ""))
        return self.schedule.label(f"{pc.criterion}-{pc.structure}", options)

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
