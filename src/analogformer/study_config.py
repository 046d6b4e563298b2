"""The study config: one YAML file describing a whole experiment.

Composed of the per-concern configs (`AnalogConfig`, `FinetuneConfig`, `SweepConfig`,
`AttentionQuantConfig`, `HWAConfig`, `PruneConfig`). Loading is strict: unknown keys and
wrong types are errors naming the key path and the allowed keys/values. `--set a.b=v`
overrides are applied to the dict before validation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from .config import AnalogConfig, _check_choice, _check_positive, _fail, from_dict, to_dict
from .finetune import FinetuneConfig
from .nn.attention import AttentionQuantConfig
from .pruning import PruneConfig
from .sweep import CONDITIONS, SweepConfig


@dataclass
class DataConfig:
    """Where the GLUE data comes from. `glue_dir` (a folder in the standard GLUE layout)
    is used when set; `glue_dir: null` loads HF `datasets` ("glue", task) from the hub."""

    glue_dir: Optional[str] = "../shared/data/glue"
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    max_length: int = 128

    def __post_init__(self):
        _check_positive(self, "max_train_examples", allow_none=True, integer=True)
        _check_positive(self, "max_eval_examples", allow_none=True, integer=True)
        _check_positive(self, "max_length", integer=True)


@dataclass
class HWAStudyConfig:
    """HWA fine-tuning in a study: the noise/clipping recipe (`recipe`) and the
    optimisation (`finetune`, by default the digital recipe's values). `init_from`:
    start from the "digital" fine-tuned checkpoint or from the "pretrained" model."""

    recipe: Any = None  # an analogformer.training.HWAConfig (or its fields as a mapping)
    finetune: Dict[str, Any] = field(default_factory=dict)
    init_from: str = "digital"

    def __post_init__(self):
        from .training import HWAConfig  # training pulls in the whole nn stack: import late

        _check_choice(self, "init_from", {"digital", "pretrained"})
        if self.recipe is None:
            self.recipe = HWAConfig()
        elif isinstance(self.recipe, dict):
            self.recipe = from_dict(HWAConfig, self.recipe, prefix="hwa.recipe")
        elif not isinstance(self.recipe, HWAConfig):
            _fail("HWAStudyConfig", "recipe", f"must be a mapping of HWAConfig fields, got {self.recipe!r}")


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
        _check_choice(self, "source", {"digital", "hwa"})
        _check_positive(self, "calibration_batches", integer=True)
        _check_positive(self, "stages", integer=True)
        _check_positive(self, "retrain_seeds", integer=True)
        self.stages, self.retrain_seeds = int(self.stages), int(self.retrain_seeds)
        if self.round_seeds is not None:
            _check_positive(self, "round_seeds", integer=True)
            self.round_seeds = int(self.round_seeds)
            if not self.progressive:
                _fail("PruneStudyConfig", "round_seeds", "sets the retraining seeds of the rounds before the "
                                                         "last and needs progressive: true; use retrain_seeds")
        for flag in ("control", "progressive"):
            if not isinstance(getattr(self, flag), bool):
                _fail("PruneStudyConfig", flag, f"must be true or false, got {getattr(self, flag)!r}")
        if isinstance(self.prune, dict):
            self.prune = from_dict(PruneConfig, self.prune, prefix="pruning.prune")
        if self.ratios is not None:
            if isinstance(self.ratios, (int, float)):
                self.ratios = [self.ratios]
            if not self.ratios:
                _fail("PruneStudyConfig", "ratios", "must be a non-empty list of ratios in [0, 1) or null")
            if self.prune.block_ratios:
                _fail("PruneStudyConfig", "ratios", "cannot be combined with prune.block_ratios")
            self.ratios = tuple(self.variant(ratio=r).ratio for r in self.ratios)
            if len(set(self.ratios)) != len(self.ratios):
                _fail("PruneStudyConfig", "ratios", f"repeats a ratio: {list(self.ratios)}")
        if isinstance(self.baselines, dict) or not all(isinstance(b, dict) for b in self.baselines):
            _fail("PruneStudyConfig", "baselines",
                  "must be a list of mappings of PruneConfig fields, e.g. [{criterion: random}]")
        self.baselines = tuple(dict(b) for b in self.baselines)
        labels = [self.label(self.prune)]
        for b in self.baselines:
            if "ratio" in b or "block_ratios" in b:
                _fail("PruneStudyConfig", "baselines", "set ratios in `ratios` / `prune`, not per baseline")
            labels.append(self.label(self.variant(**b)))
        if len(set(labels)) != len(labels):
            _fail("PruneStudyConfig", "baselines", f"two methods are the same: {labels}")
        if self.stages > 1 and any(pc.reconstruct for _, pc, _ in self.runs()):
            _fail("PruneStudyConfig", "stages", "gradual pruning (stages > 1) cannot be combined "
                                                "with reconstruct (it refits after one-shot pruning); "
                                                "use stages: 1")
        if self.stages > 1 and any(pc.admm_rho is not None for _, pc, _ in self.runs()):
            _fail("PruneStudyConfig", "stages", "gradual pruning (stages > 1) cannot be combined "
                                                "with ADMM (admm_rho); use stages: 1")
        if self.progressive:
            if self.ratios is None or len(self.ratios) < 2:
                _fail("PruneStudyConfig", "progressive", "prunes in rounds across `ratios`: give at least "
                                                         "two, e.g. ratios: [0.1666667, 0.3333333]")
            if list(self.ratios) != sorted(self.ratios):
                _fail("PruneStudyConfig", "progressive", f"needs `ratios` in increasing order (each round "
                                                         f"removes more), got {list(self.ratios)}")
            if self.stages > 1 or any(pc.admm_rho is not None for _, pc, _ in self.runs()):
                _fail("PruneStudyConfig", "progressive", "rounds of one-shot pruning cannot be combined with "
                                                         "gradual (stages > 1) or ADMM (admm_rho) pruning")
        if self.retrain_seeds > 1 and (self.stages > 1 or any(pc.admm_rho is not None for _, pc, _ in self.runs())):
            _fail("PruneStudyConfig", "retrain_seeds", "several retraining seeds need one-shot pruning "
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


@dataclass
class StudyConfig:
    """Everything one `analogformer study` run does."""

    model: Optional[str] = None  # hub name or local path; None = the bundled MiniLM
    tasks: Tuple[str, ...] = ("sst2",)
    seed: int = 0
    output_dir: str = "runs/study"
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    finetune_per_task: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    analog: AnalogConfig = field(default_factory=AnalogConfig)
    attention: AttentionQuantConfig = field(default_factory=lambda: AttentionQuantConfig(bits=None))
    hwa: Optional[HWAStudyConfig] = None
    pruning: Optional[PruneStudyConfig] = None
    sweep: SweepConfig = field(default_factory=SweepConfig)
    conditions: Tuple[str, ...] = ("digital", "analog-nocomp", "analog", "analog-gamma0.5")
    # fine-tune this many seeds per task (digital, and HWA) and keep the best on the dev
    # set; seed 001 picks the best of 5 (SPEC §4.1). HWA candidates are ranked on tiles.
    best_of: int = 1
    # device instances behind every score on tiles that selects a model (HWA candidates of
    # best_of, keep_best evaluations of HWA fine-tuning); drawn apart from the sweep's
    select_repeats: int = 2

    def __post_init__(self):
        from .tasks import resolve_task

        _check_positive(self, "best_of", integer=True)
        _check_positive(self, "select_repeats", integer=True)
        self.best_of, self.select_repeats = int(self.best_of), int(self.select_repeats)

        if isinstance(self.tasks, str) or not self.tasks:
            _fail("StudyConfig", "tasks", "must be a non-empty list of GLUE task names")
        for t in self.tasks:
            try:
                resolve_task(t)
            except (KeyError, ValueError) as e:
                _fail("StudyConfig", "tasks", str(e).strip("'\""))
        for c in self.conditions:
            if c not in CONDITIONS:
                _fail("StudyConfig", "conditions", f"unknown condition {c!r}; allowed: {list(CONDITIONS)}")
        models = {CONDITIONS[c].model for c in self.conditions}
        if "hwa" in models and self.hwa is None:
            _fail("StudyConfig", "conditions", "an 'hwa*' condition needs an `hwa:` section")
        if "pruned" in models and self.pruning is None:
            _fail("StudyConfig", "conditions", "a 'pruned*' condition needs a `pruning:` section")
        for task, over in self.finetune_per_task.items():
            if not isinstance(over, dict):
                _fail("StudyConfig", "finetune_per_task", f"{task}: expected a mapping of FinetuneConfig fields")
            self.finetune_for(task)  # validates the override keys now, not mid-run
        for task in self.tasks:  # the digital fine-tune starts from the pre-trained model: no teacher
            f = self.finetune_for(task)
            for name in FinetuneConfig.TEACHER_FIELDS:
                if getattr(f, name) > 0:
                    _fail("StudyConfig", "finetune", f"{name}={getattr(f, name)} for {task!r}: the digital "
                          "fine-tune has no teacher; set it under pruning.retrain or hwa.finetune")
        # the retraining and HWA recipes are checked now too, not after the digital fine-tunes
        for section, over in (("pruning.retrain", self.pruning.retrain if self.pruning else None),
                              ("hwa.finetune", self.hwa.finetune if self.hwa else None)):
            if over is not None:
                for task in self.tasks:
                    f = self.finetune_for(task, over, prefix=section)
                    # on the resolved recipe: ema_decay may come from `finetune` / `finetune_per_task`
                    if section == "pruning.retrain" and self.pruning.stages > 1 and f.ema_decay is not None:
                        _fail("StudyConfig", "pruning.retrain.ema_decay",
                              f"{f.ema_decay} for {task!r}: weight averaging needs masks that stay fixed "
                              "during the retraining; gradual pruning (stages > 1) changes them (the "
                              "average would keep rows pruned later): use stages: 1, or ema_decay: null")

    def finetune_for(self, task: str, overrides: Optional[Dict[str, Any]] = None,
                     prefix: Optional[str] = None) -> FinetuneConfig:
        """The fine-tuning recipe for `task`: `finetune`, then `finetune_per_task[task]`, then
        `overrides` (e.g. `pruning.retrain`; errors name `prefix`)."""
        base = to_dict(self.finetune)
        base.update(self.finetune_per_task.get(task, {}))
        base.update(overrides or {})
        return from_dict(FinetuneConfig, base, prefix=prefix or f"finetune_per_task.{task}")


# ------------------------------------------------------------------ YAML + overrides

def parse_override(text: str) -> Tuple[str, Any]:
    """'analog.adc.bits=8' -> ('analog.adc.bits', 8) (the value is parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. --set analog.adc.bits=8")
    key, _, raw = text.partition("=")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_override(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ValueError(f"--set {key}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def load_study_config(path: Optional[str] = None, overrides=()) -> StudyConfig:
    """Read a YAML study file (or the defaults when `path` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"study config {p} does not exist; presets are in configs/ "
                             "(e.g. configs/quickstart.yaml)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: the top level must be a mapping of study keys")
    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        apply_override(data, key, value)
    return from_dict(StudyConfig, data)


def dump_study_config(cfg: StudyConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
