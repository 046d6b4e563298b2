"""Extractive question answering, SQuAD v1.1, as the registered task ``squad`` (seeds 002
and 004): `AutoModelForQuestionAnswering` (a start / end logit per token), sliding-window
encoding (`squad_data`), answers from the logits and the official v1.1 EM / F1
(`squad_eval`). Headline: F1 (higher is better); EM beside it. Records hold both on a
[0, 1] scale like every task's metrics; the report shows them × 100, which is the number
the official script prints.

Data: `data.squad_dir` (default ``../shared/data/squad_v1.1``; null = HF hub), windows of
`data.max_length` tokens overlapping by `data.doc_stride`; see `squad_data` for the
by-article tuning / evaluation split of the dev set. `max_train_examples` /
`max_eval_examples` count questions, not windows.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .glue import make_loader
from .registry import Task, register_task
from .squad_data import SquadFeatures, encode_squad, load_squad_examples
from .squad_eval import WindowLogits, answer_from_logits, squad_scores

__all__ = ["SquadTask", "predict_answers", "evaluate_squad"]

_NOT_MODEL_INPUTS = ("feature_index", "squad", "start_positions", "end_positions")


def predict_answers(model: nn.Module, batches: Sequence[dict], n_best: int = 20,
                    max_answer_length: int = 30) -> Dict[str, str]:
    """{question id: answer text} of `model` on evaluation batches of one `SquadFeatures`."""
    if not batches:
        raise ValueError("predict_answers got no batches")
    feats: SquadFeatures = batches[0]["squad"]
    n = len(feats)
    start: List[Optional[np.ndarray]] = [None] * n
    end: List[Optional[np.ndarray]] = [None] * n
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                if batch.get("squad") is not feats:
                    raise ValueError("predict_answers: the batches come from different SQuAD sets")
                inputs = {k: v.to(device) for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
                out = model(**inputs)
                s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
                for row, f in enumerate(batch["feature_index"].tolist()):
                    start[f], end[f] = s[row], e[row]
    finally:
        model.train(was_training)
    missing = [f for f in range(n) if start[f] is None]
    if missing:
        raise ValueError(f"predict_answers: {len(missing)} window(s) of the set are in no batch")
    windows: Dict[int, List[WindowLogits]] = {}
    for f in range(n):
        windows.setdefault(feats.example_index[f], []).append(WindowLogits(start[f], end[f], feats.offsets[f]))
    return {ex.id: answer_from_logits(ex.context, windows.get(i, []), n_best, max_answer_length)
            for i, ex in enumerate(feats.examples)}


def evaluate_squad(model: nn.Module, batches: Sequence[dict], n_best: int = 20,
                   max_answer_length: int = 30) -> Dict[str, float]:
    """{"f1", "exact_match"} on a [0, 1] scale (official v1.1 points / 100)."""
    feats: SquadFeatures = batches[0]["squad"]
    answers = predict_answers(model, batches, n_best, max_answer_length)
    scores = squad_scores({ex.id: list(ex.answers) for ex in feats.examples}, answers)
    return {"f1": scores["f1"] / 100.0, "exact_match": scores["exact_match"] / 100.0}


class SquadTask(Task):
    """SQuAD v1.1 extractive QA (see the module doc)."""

    name = "squad"
    display_name = "SQuAD v1.1"
    auto_class = "AutoModelForQuestionAnswering"
    metric_names = {"f1": "F1", "exact_match": "EM"}
    n_best = 20                # start and end candidates per window (HF's run_qa default)
    max_answer_length = 30     # tokens

    def dataset(self, split: str, tokenizer, data, max_examples: Optional[int], seed: int):
        examples = load_squad_examples(split, data.squad_dir, max_examples, seed)
        return encode_squad(examples, tokenizer, data.max_length, data.doc_stride, training=split == "train")

    def loader(self, dataset, batch_size: int, shuffle: bool, seed: int = 0):
        return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed)

    def evaluate(self, model: nn.Module, batches: Sequence[dict], key: str) -> Dict[str, float]:
        return evaluate_squad(model, batches, self.n_best, self.max_answer_length)

    def headline_metric(self, key: str) -> str:
        return "f1"


register_task(SquadTask(), aliases=["squad1.1", "squad-v1.1", "squad_v1.1"])
