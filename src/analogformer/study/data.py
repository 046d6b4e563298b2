"""The data of one study task, encoded once and shared by every step of the pipeline."""
from __future__ import annotations

import itertools
from typing import Dict, List

from torch import nn

from ..tasks.registry import find_task
from ..training.finetune import unlabelled


class TaskData:
    """Encoded train / eval data of one task of a study (`cfg.tasks` entry `task`), and the
    task's own evaluation: everything the steps need to know about the task goes through here.

    `evals` maps each record key (e.g. "sst2", or "mnli-m" and "mnli-mm") to its evaluation
    batches; the first one is the *dev set* that model selection and pruning records use.
    """

    def __init__(self, cfg, task: str, tokenizer):
        ref = find_task(task)
        self.task = ref.task
        self.name = ref.name
        self.special_ids = list(tokenizer.all_special_ids)  # never replaced by augmentation
        d = cfg.data
        fcfg = cfg.finetune_for(self.name)
        n_train = fcfg.max_train_examples or d.max_train_examples
        self.train = self.task.dataset("train", tokenizer, d, n_train, cfg.seed)
        n_eval = fcfg.max_eval_examples or d.max_eval_examples
        self.evals: Dict[str, List[dict]] = {}
        for key, split in ref.eval_sets().items():
            enc = self.task.dataset(split, tokenizer, d, n_eval, cfg.seed)
            self.evals[key] = list(self.task.loader(enc, cfg.sweep.eval_batch_size, shuffle=False))
        self.calib = self.unlabelled_batches(cfg.sweep.calibration_batches, fcfg.batch_size, cfg.seed + 1)

    @property
    def dev_key(self) -> str:
        """The record key of the dev set (the first evaluation set)."""
        return next(iter(self.evals))

    def train_loader(self, batch_size: int, seed: int):
        return self.task.loader(self.train, batch_size, shuffle=True, seed=seed)

    def unlabelled_batches(self, n: int, batch_size: int, seed: int) -> List[dict]:
        """The first `n` batches of `train_loader(batch_size, seed)` without labels
        (calibration inputs)."""
        return [unlabelled(b) for b in itertools.islice(self.train_loader(batch_size, seed), n)]

    def evaluate(self, model: nn.Module, key: str) -> Dict[str, float]:
        """Metrics of `model` on the evaluation set `key`."""
        return self.task.evaluate(model, self.evals[key], key)

    def headline(self, key: str, metrics: Dict[str, float]) -> float:
        return self.task.headline(key, metrics)

    def dev_headline(self, model: nn.Module) -> float:
        """Headline metric of `model` (as it is: digital or on tiles) on the dev set."""
        return self.headline(self.dev_key, self.evaluate(model, self.dev_key))

    @property
    def higher_is_better(self) -> bool:
        return self.task.higher_is_better

    def better(self, a: float, b: float) -> bool:
        """Whether dev headline `a` beats `b`."""
        return self.task.better(a, b)
