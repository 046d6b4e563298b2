"""Pruning schedules: how a study turns the dense model into a pruned one and retrains it.

A schedule is one registered dataclass per `kind`, chosen in a study YAML as a tagged
mapping, e.g. ``pruning.schedule: {kind: gradual, stages: 3}``:

* ``oneshot`` — prune once, then retrain with the masks held (the default);
* ``gradual`` — reach the ratio in `stages` nested steps during the retraining
  (`GradualPruner`, Zhu & Gupta 2017);
* ``progressive`` — one-shot pruning in rounds across the study's ascending `ratios`, each
  round starting from the previous round's retrained model (Ye et al. 2019);
* ``admm`` — train with an ADMM penalty toward the structured-sparse set, prune hard, then
  retrain with the masks held (`ADMMPruner`).

Each schedule states which study options it supports (`supports_<option>`, checked once by
`check_supported`), how it tags method labels, and produces the pruned model in `prune(job)`.
The study's side of that conversation is the `PruneJob` protocol (`study.prune_step`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Dict, Optional, Protocol, Sequence, Tuple, Type

import yaml
from torch import nn

from .admm import ADMMPruner
from .criteria import prune
from .gradual import GradualPruner
from .masks import PruningMasks
from .prune_config import PruneConfig
from ..config import check_positive, from_dict, to_dict
from ..logs import get_logger

logger = get_logger(__name__)


class PruneJob(Protocol):
    """What a schedule gets from the study for one method at one ratio."""

    model: nn.Module
    """The copy to prune and retrain (of the dense model, or of the previous round's)."""
    source: nn.Module
    """The dense model (never modified)."""
    pc: PruneConfig
    """The method: criterion, structure, ratio, …"""
    stats: object
    """Calibration statistics of `model` for the criterion (None if it needs none)."""
    previous: Optional[PruningMasks]
    """Masks of the previous round (progressive): their units stay removed."""
    name: str
    """"<task>: <method> ratio <r>" for log messages."""

    def record_pruned(self, model: nn.Module) -> float:
        """Write the "after pruning" record of `model`; returns its headline."""

    def stats_of(self, model: nn.Module) -> object:
        """Fresh calibration statistics of `model` for the criterion."""

    def total_steps(self) -> int:
        """Optimizer steps of the retraining."""

    def train_phase(self, after_step: Callable[[nn.Module], object],
                    extra_loss: Callable[[nn.Module], object]) -> None:
        """Train `model` before the hard pruning (no model selection, no averaging)."""


class HeldMasks:
    """Masks fixed before the retraining: gradients masked, weights re-zeroed every step."""

    fixed = True
    final = True
    during = ""

    def __init__(self, masks: PruningMasks):
        self.masks = masks

    def hold(self, model: nn.Module) -> None:
        """Before retraining `model`: mask its gradients."""
        self.masks.register_gradient_hooks(model)

    def after_step(self, model: nn.Module) -> None:
        self.masks.after_step(model)

    def release(self) -> PruningMasks:
        """After the retraining: remove the hooks; the final masks."""
        self.masks.remove_hooks()
        return self.masks


class GradualHold:
    """The masks of a `GradualPruner`, which prunes further during the retraining."""

    fixed = False

    def __init__(self, pruner: GradualPruner, stages: int):
        self.pruner = pruner
        self.during = f"in {stages} stages during "

    @property
    def masks(self) -> PruningMasks:
        return self.pruner.masks

    @property
    def final(self) -> bool:
        """Only states at the final ratio are candidates of model selection."""
        return self.pruner.final

    def hold(self, model: nn.Module) -> None:
        """The pruner holds its masks on the model it was built with already."""

    def after_step(self, model: nn.Module) -> None:
        self.pruner.after_step(model)

    def release(self) -> PruningMasks:
        self.pruner.remove_hooks()
        return self.pruner.masks


# option -> why a schedule may not support it (the generic message of `check_supported`)
OPTIONS = {
    "reconstruct": "the least-squares refit runs once, right after pruning, on masks that "
                   "stay fixed during the retraining",
    "retrain_seeds": "several retraining seeds all start from one pruned state, fixed by "
                     "one-shot pruning before the retraining",
    "ema_decay": "weight averaging needs masks that stay fixed during the retraining",
}


class Schedule:
    """Base of the schedules: what every kind declares and does."""

    title: ClassVar[str] = ""
    """What the schedule is called in messages."""
    supports_reconstruct: ClassVar[bool] = True
    """`prune.reconstruct` (least-squares refit after pruning) is allowed."""
    supports_retrain_seeds: ClassVar[bool] = True
    """`retrain_seeds` > 1 is allowed."""
    supports_ema_decay: ClassVar[bool] = True
    """`retrain.ema_decay` (weight averaging of the retraining) is allowed."""
    rounds: ClassVar[bool] = False
    """Each ratio starts from the previous ratio's retrained model."""
    kind: str
    """The registered name (every schedule dataclass sets it as its first field)."""

    def _check_kind(self) -> None:
        expected = type(self).__dataclass_fields__["kind"].default
        if self.kind != expected:
            raise ValueError(f"{type(self).__name__}.kind: must be {expected!r}, got {self.kind!r}")

    def supports(self, option: str) -> bool:
        """Whether this schedule supports study option `option` (a key of `OPTIONS`)."""
        return getattr(self, f"supports_{option}")

    def check(self, ratios: Optional[Sequence[float]]) -> None:
        """Checks needing the study's `ratios`; raises ValueError."""

    def label(self, method: str, options: str) -> str:
        """The method label: "<criterion>-<structure>" + schedule tag + "-global…-ls"."""
        return method + options

    def seeds_at(self, ratio: float, ratios: Optional[Sequence[float]], retrain_seeds: int) -> int:
        """How many retraining seeds a method gets at `ratio`."""
        return retrain_seeds

    def spelling(self) -> str:
        """The schedule as a YAML flow mapping, e.g. "{kind: gradual, stages: 3}"."""
        d = {k: v for k, v in to_dict(self).items() if v is not None}
        return yaml.safe_dump(d, default_flow_style=True, sort_keys=False, width=1 << 16).strip()

    def prune(self, job: PruneJob) -> Tuple[float, HeldMasks]:
        """Prune `job.model`, write its "after pruning" record: (its headline, the masks to
        hold during the retraining)."""
        raise NotImplementedError


SCHEDULES: Dict[str, Type[Schedule]] = {}


def register_schedule(cls: Type[Schedule]) -> Type[Schedule]:
    """Class decorator: register a schedule dataclass under its `kind` default."""
    kind = cls.__dataclass_fields__["kind"].default
    if kind in SCHEDULES:
        raise ValueError(f"schedule {kind!r} is registered already")
    SCHEDULES[kind] = cls
    return cls


@register_schedule
@dataclass
class OneShotSchedule(Schedule):
    """Prune once, then retrain with the masks held."""

    kind: str = "oneshot"
    """The schedule's name in YAML."""
    title: ClassVar[str] = "one-shot pruning"

    def __post_init__(self):
        self._check_kind()

    def prune(self, job: PruneJob) -> Tuple[float, HeldMasks]:
        masks = prune(job.model, job.pc, job.stats, previous=job.previous)
        return job.record_pruned(job.model), HeldMasks(masks)


@register_schedule
@dataclass
class GradualSchedule(Schedule):
    """Reach each ratio in `stages` nested steps spread over the retraining, scored afresh
    on the retrained model each time (`GradualPruner`). The "after pruning" record is the
    one-shot pruned model (no retraining)."""

    kind: str = "gradual"
    """The schedule's name in YAML."""
    stages: int = 2
    """Nested pruning steps spread over the retraining (≥ 2)."""
    title: ClassVar[str] = "gradual pruning"
    supports_reconstruct: ClassVar[bool] = False
    supports_retrain_seeds: ClassVar[bool] = False
    supports_ema_decay: ClassVar[bool] = False

    def __post_init__(self):
        self._check_kind()
        check_positive(self, "stages", integer=True)
        self.stages = int(self.stages)
        if self.stages < 2:
            raise ValueError(f"GradualSchedule.stages: must be ≥ 2, got {self.stages} (one step is "
                             "kind: oneshot)")

    def prune(self, job: PruneJob) -> Tuple[float, GradualHold]:
        oneshot = copy.deepcopy(job.source).eval()
        prune(oneshot, job.pc, job.stats)
        after = job.record_pruned(oneshot)
        del oneshot
        stats_fn = job.stats_of if job.pc.needs_calibration else (lambda m: None)
        pruner = GradualPruner(job.model, job.pc, self.stages, job.total_steps(), stats_fn)
        return after, GradualHold(pruner, self.stages)


@register_schedule
@dataclass
class ProgressiveSchedule(OneShotSchedule):
    """One-shot pruning in rounds across the study's `ratios` (ascending): every ratio after
    the first starts from the previous ratio's retrained model (its first seed), keeps the
    units removed there and removes the rest afresh — scored on that model, refit and
    retrained toward the dense model. Method labels end in "-prog"."""

    kind: str = "progressive"
    """The schedule's name in YAML."""
    round_seeds: Optional[int] = None
    """Retraining seeds of every round but the last (only the first seed's model goes on to
    the next round); None = `retrain_seeds`."""
    title: ClassVar[str] = "progressive pruning (rounds across ratios)"
    rounds: ClassVar[bool] = True

    def __post_init__(self):
        self._check_kind()
        if self.round_seeds is not None:
            check_positive(self, "round_seeds", integer=True)
            self.round_seeds = int(self.round_seeds)

    def check(self, ratios: Optional[Sequence[float]]) -> None:
        if ratios is None or len(ratios) < 2:
            raise ValueError("kind 'progressive' prunes in rounds across `ratios`: give at least "
                             "two, e.g. ratios: [0.1666667, 0.3333333]")
        if list(ratios) != sorted(ratios):
            raise ValueError(f"kind 'progressive' needs `ratios` in increasing order (each round "
                             f"removes more), got {list(ratios)}")

    def label(self, method: str, options: str) -> str:
        return method + options + "-prog"

    def seeds_at(self, ratio: float, ratios: Optional[Sequence[float]], retrain_seeds: int) -> int:
        if self.round_seeds is not None and ratio != ratios[-1]:
            return self.round_seeds
        return retrain_seeds


@register_schedule
@dataclass
class ADMMSchedule(Schedule):
    """Train with the ADMM penalty toward the structured-sparse set (the retraining recipe,
    without selection or averaging), prune hard, then retrain with the masks held
    (`ADMMPruner`). Method labels get "-admm"."""

    kind: str = "admm"
    """The schedule's name in YAML."""
    rho: float = 1e-3
    """ADMM penalty weight ρ (> 0)."""
    interval_steps: int = 10
    """Optimizer steps between the ADMM projections (Z, U updates)."""
    title: ClassVar[str] = "ADMM pruning"
    supports_retrain_seeds: ClassVar[bool] = False

    def __post_init__(self):
        self._check_kind()
        check_positive(self, "rho")
        check_positive(self, "interval_steps", integer=True)
        self.interval_steps = int(self.interval_steps)

    def label(self, method: str, options: str) -> str:
        return method + "-admm" + options

    def prune_config(self, pc: PruneConfig) -> PruneConfig:
        """`pc` with this schedule's ADMM settings (what `ADMMPruner` reads)."""
        return replace(pc, admm_rho=self.rho, admm_interval_steps=self.interval_steps)

    def prune(self, job: PruneJob) -> Tuple[float, HeldMasks]:
        logger.info(f"{job.name}: ADMM phase (rho {self.rho:g})")
        admm = ADMMPruner(job.model, self.prune_config(job.pc), job.stats)
        job.train_phase(after_step=admm.step, extra_loss=admm.penalty)
        masks = admm.finalize(job.model)
        return job.record_pruned(job.model), HeldMasks(masks)


def schedule_from_dict(data, prefix: str = "pruning.schedule") -> Schedule:
    """A schedule from its tagged mapping {kind: ..., <its fields>} (or just its kind)."""
    if isinstance(data, Schedule):
        return data
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"{prefix}: must be a mapping with a `kind`, one of {list(SCHEDULES)}, "
                         f"e.g. {{kind: gradual, stages: 3}}; got {data!r}")
    if data["kind"] not in SCHEDULES:
        raise ValueError(f"{prefix}.kind: unknown schedule {data['kind']!r}; registered: "
                         f"{list(SCHEDULES)}")
    return from_dict(SCHEDULES[data["kind"]], data, prefix=prefix)


def check_supported(schedule: Schedule, option: str, where: str, value) -> None:
    """The one compatibility check: `option` (set to `value` at `where`) must be supported
    by `schedule`; the error names both and the schedules that do support it."""
    if not schedule.supports(option):
        names = [k for k, cls in SCHEDULES.items() if getattr(cls, f"supports_{option}")]
        raise ValueError(f"{where}: {value} is not supported by schedule {schedule.kind!r} "
                         f"({schedule.title}): {OPTIONS[option]}; schedules that support it: {names}")
