"""The GLUE tasks as registered `Task`s (SPEC §5): sequence classification (STS-B:
regression) with `AutoModelForSequenceClassification`, data from a local GLUE folder
(`data.glue_dir`) or, with `glue_dir: null`, from the HF hub."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from torch import nn

from ..training.finetune import predict
from .glue import GLUE_ALIASES, GLUE_TASKS, GlueTaskSpec, encode_examples, get_task, load_glue_examples, make_loader
from .metrics import compute_metrics, headline_metric, predictions_from_logits
from .registry import Task, register_task

__all__ = ["GlueTask", "load_model_and_tokenizer", "evaluate", "load_checkpoint"]

_METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "mcc": "Matthews corr.",
                 "pearson": "Pearson", "spearmanr": "Spearman", "acc_and_f1": "acc/F1 mean",
                 "pearson_and_spearman": "Pearson/Spearman mean"}


class GlueTask(Task):
    """One GLUE task; MNLI evaluates its matched and mismatched dev sets ("mnli-m",
    "mnli-mm"), or one of them when the study names "mnli-m" / "mnli-mm"."""

    metric_names = _METRIC_NAMES
    average_group = "GLUE"

    def __init__(self, spec: GlueTaskSpec):
        self.spec = spec
        self.name = spec.name
        self.display_name = spec.folder

    def eval_sets(self, variant: Optional[str] = None) -> Dict[str, str]:
        splits = (variant,) if variant else self.spec.eval_splits
        if len(splits) == 1:
            return {self.name: splits[0]}
        return {f"{self.name}-{'mm' if 'mismatched' in s else 'm'}": s for s in splits}

    def dataset(self, split: str, tokenizer, data, max_examples: Optional[int], seed: int):
        examples = load_glue_examples(self.name, split, data.glue_dir, max_examples, seed)
        return encode_examples(examples, tokenizer, data.max_length)

    def loader(self, dataset, batch_size: int, shuffle: bool, seed: int = 0):
        return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed)

    def model_kwargs(self) -> Dict:
        spec = self.spec
        if spec.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": spec.num_labels, "problem_type": "single_label_classification",
                "id2label": dict(enumerate(spec.label_names)),
                "label2id": {name: i for i, name in enumerate(spec.label_names)}}

    def evaluate(self, model: nn.Module, batches: Sequence[dict], key: str) -> Dict[str, float]:
        return evaluate(model, batches, self.name)

    def headline_metric(self, key: str) -> str:
        return headline_metric(self.name)


def _register_glue() -> None:
    aliases: Dict[str, Dict[str, Optional[str]]] = {}
    for alias, (name, split) in GLUE_ALIASES.items():
        aliases.setdefault(name, {})[alias] = split
    for name, spec in GLUE_TASKS.items():
        register_task(GlueTask(spec), aliases.get(name, {}))


_register_glue()


# ---- the GLUE classifier functions of the Python API (a task given by name or alias)

def load_model_and_tokenizer(name_or_path, task: str, seed: int = 0):
    """``(AutoModelForSequenceClassification, tokenizer)`` for GLUE ``task`` from a path or
    hub name. The classification head (and a missing pooler, as in MiniLM) is initialised
    fresh by HF, drawn from the torch RNG seeded with ``seed`` so the head is reproducible."""
    return GlueTask(get_task(task)).load_model(name_or_path, seed)


def evaluate(model: nn.Module, batches, task: str) -> Dict[str, float]:
    """GLUE metrics (``tasks.metrics.compute_metrics``) of ``model`` on a loader's batches."""
    logits, labels = predict(model, batches)
    return compute_metrics(task, predictions_from_logits(task, logits), np.asarray(labels))


def load_checkpoint(path):
    """``(model, tokenizer)`` of a sequence classifier saved by ``save_checkpoint`` (plain HF
    modules). The tokenizer is ``None`` when none was saved."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a checkpoint folder: config.json is missing")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
    return model, tokenizer
