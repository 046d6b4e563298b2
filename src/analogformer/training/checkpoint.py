"""Model outputs and checkpoints that are never silently non-finite: `predict` refuses NaN /
inf logits and `save_checkpoint` refuses to write NaN / inf weights (a saved checkpoint is
reused by every later run of a study, so a broken one would poison them all)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

__all__ = ["nonfinite_parameters", "predict", "save_checkpoint", "device_of", "to_device"]


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of `model` holding a NaN or an infinity."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [n for n, t in named if t is not None and t.is_floating_point() and not torch.isfinite(t).all()]


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def predict(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` over the loader, in loader order (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            labels.append(batch.pop("labels").cpu())
            logits.append(model(**batch).logits.float().cpu())
            if not torch.isfinite(logits[-1]).all():
                model.train(was_training)
                bad = nonfinite_parameters(model)
                raise FloatingPointError(
                    f"predict: the model's outputs on batch {len(logits)} contain NaN or inf"
                    + (f"; non-finite parameters: {bad[:5]}" if bad else
                       " although its parameters are finite (an overflow: check the model's dtype)")
                    + "; no metric is computed from them")
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def save_checkpoint(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Save model (safetensors) and tokenizer to the folder ``path``; returns it. An analogized
    model saves as the plain HF model (`nn.export.digital_state_dict`): `from_pretrained`
    of the original class reloads it."""
    from ..nn.export import digital_state_dict  # here: nn imports training
    bad = nonfinite_parameters(model)
    if bad:
        raise FloatingPointError(f"save_checkpoint: refusing to save {path}: parameters {bad[:5]}"
                                 f"{' …' if len(bad) > 5 else ''} hold NaN or inf")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=digital_state_dict(model), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
