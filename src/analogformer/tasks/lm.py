"""Causal language modelling as registered tasks: token-level cross-entropy and perplexity
on fixed-length windows of raw text (`lm_data`), models through `AutoModelForCausalLM`
(GGUF files included, `lm_models`).

* ``wikitext2``: trains / calibrates on WikiText-2 valid, reports WikiText-2 test (raw);
* ``text``: the user's own files (`data.lm.text_files`).

Cross-entropy is the mean negative log-likelihood per scored token over the whole evaluation
set (tokens of all windows pooled, as perplexity is defined); perplexity = exp(CE). Lower is
better: model selection, drops and the report follow `higher_is_better = False`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..training.checkpoint import device_of, nonfinite_parameters, to_device
from .lm_data import LMDataConfig, encode_windows, read_split_text, window_loader
from .lm_models import DEFAULT_LM, load_causal_lm
from .registry import Task, _loading, register_task

__all__ = ["CausalLMTask", "lm_metrics"]


def lm_metrics(model: nn.Module, batches: Sequence[dict], max_tokens: int = 2048) -> Dict[str, float]:
    """{"cross_entropy", "perplexity", "tokens"} of `model` on `batches` (dicts with
    input_ids, attention_mask and labels; -100 = not scored). Each batch runs in chunks of at
    most `max_tokens` tokens (the logits of one 512-token window over a 49k-token vocabulary
take 100 MB); a digital model's sums do not depend on the chunking (on tiles, the noise
    draws follow the chunk shapes, which are fixed for a given batch list)."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    nll, count = 0.0, 0
    with torch.no_grad():
        for b, batch in enumerate(batches):
            rows = batch["input_ids"].shape[0]
            step = max(1, max_tokens // batch["input_ids"].shape[1])
            for start in range(0, rows, step):
                part = to_device({k: v[start:start + step] for k, v in batch.items()}, device)
                labels = part.pop("labels")
                logits = model(**part).logits[:, :-1].float()
                if not torch.isfinite(logits).all():
                    model.train(was_training)
                    bad = nonfinite_parameters(model)
                    raise FloatingPointError(f"lm_metrics: the model's logits on batch {b + 1} contain NaN or inf"
                                             + (f"; non-finite parameters: {bad[:5]}" if bad else "")
                                             + "; no perplexity is computed from them")
                target = labels[:, 1:]
                nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum"))
                count += int((target != -100).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("lm_metrics: the batches score no token (every label is -100)")
    ce = nll / count
    return {"cross_entropy": ce, "perplexity": math.exp(min(ce, 700.0)), "tokens": float(count)}


class CausalLMTask(Task):
    """Next-token prediction on raw text; `source` names where the text comes from
    ("wikitext2" or "text", see `lm_data.read_split_text`)."""

    auto_class = "AutoModelForCausalLM"
    higher_is_better = False
    metric_names = {"cross_entropy": "cross-entropy (nats/token)", "perplexity": "perplexity",
                    "tokens": "scored tokens"}
    metric_scale = 1.0
    digital_finetune = False
    generates = True

    def __init__(self, name: str, display_name: str, source: str):
        self.name, self.display_name, self.source = name, display_name, source

    def eval_sets(self, variant: Optional[str] = None) -> Dict[str, str]:
        return {self.name: "eval"}

    def dataset(self, split: str, tokenizer, data, max_examples: Optional[int], seed: int):
        lm: LMDataConfig = data.lm
        text = read_split_text(self.source, "train" if split == "train" else "eval", lm)
        return encode_windows(text, tokenizer, lm, train=split == "train", max_windows=max_examples, seed=seed)

    def loader(self, dataset, batch_size: int, shuffle: bool, seed: int = 0):
        return window_loader(dataset, batch_size, shuffle, seed)

    def default_model(self) -> str:
        return DEFAULT_LM

    def load_model(self, source: str | Path, seed: int = 0) -> Tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        return load_causal_lm(source)

    def load_trained(self, path: str | Path) -> nn.Module:
        from transformers import AutoModelForCausalLM
        with _loading(path):
            return AutoModelForCausalLM.from_pretrained(str(path)).eval()

    def evaluate(self, model: nn.Module, batches: Sequence[dict], key: str) -> Dict[str, float]:
        return lm_metrics(model, batches)

    def headline_metric(self, key: str) -> str:
        return "perplexity"


register_task(CausalLMTask("wikitext2", "WikiText-2", "wikitext2"), ["wikitext-2", "wikitext"])
register_task(CausalLMTask("text", "text", "text"), ["lm-text"])
