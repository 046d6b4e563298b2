"""Knowledge-distillation losses and the input augmentation that feeds them.

Used by ``finetune`` when a frozen teacher is given: Hinton's soft-target loss on the
logits, a layer-wise loss on every transformer layer's output, and token-replacement
augmentation — a copy of each batch in which some real tokens are swapped for other tokens
of the same batch, labelled only by the teacher. On small GLUE tasks the dense teacher has
memorised its training set (its soft labels there are near one-hot), so distilling on the
training inputs alone transfers little of how it generalises; TinyBERT showed that
distilling on augmented inputs closes much of that gap. TinyBERT picks replacements with a
masked-LM and word vectors; here they are drawn from the batch's own real tokens (its
unigram distribution: in-domain words, no extra model).
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["distillation_loss", "output_distillation_loss", "hidden_distillation_loss", "augment_tokens"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al.'s soft-target loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    (batch, classes) logits: the batch mean; one-output (regression) heads: the mean squared
    difference to the teacher. (batch, seq, vocab) logits (a language model): the mean over
    tokens of each token's KL, over the real tokens only when an ``attention_mask``
    (batch, seq) is given, so the loss does not grow with the sequence length or with the
    padding of a batch."""
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation needs logits of the same shape in student and teacher, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if student_logits.shape[-1] == 1:
        return torch.nn.functional.mse_loss(student_logits, teacher_logits)
    t = temperature
    if student_logits.dim() == 2:
        return torch.nn.functional.kl_div(torch.log_softmax(student_logits / t, dim=-1),
                                          torch.log_softmax(teacher_logits / t, dim=-1),
                                          reduction="batchmean", log_target=True) * t * t
    if student_logits.dim() != 3:
        raise ValueError(f"distillation takes (batch, classes) or (batch, seq, vocab) logits, got shape "
                         f"{tuple(student_logits.shape)}")
    per_token = torch.nn.functional.kl_div(torch.log_softmax(student_logits / t, dim=-1),
                                           torch.log_softmax(teacher_logits / t, dim=-1),
                                           reduction="none", log_target=True).sum(-1)  # (batch, seq)
    if attention_mask is None:
        return per_token.mean() * t * t
    if attention_mask.shape != per_token.shape:
        raise ValueError(f"the attention mask of the distillation loss must be (batch, seq) = "
                         f"{tuple(per_token.shape)}, got {tuple(attention_mask.shape)}")
    keep = attention_mask.to(per_token.dtype)
    n = keep.sum()
    if n == 0:
        raise ValueError("distillation on a batch without real tokens (its attention mask is all 0)")
    return (per_token * keep).sum() / n * t * t


def output_distillation_loss(student_out, teacher_out, temperature: float,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`distillation_loss` between two model outputs: on ``.logits`` (classifiers, language
    models), or for extractive QA (``start_logits`` / ``end_logits``, each a distribution over
    the window's positions) the mean of the start and the end loss, each the batch-mean KL
    over positions."""
    if getattr(student_out, "logits", None) is not None:
        return distillation_loss(student_out.logits, teacher_out.logits, temperature, attention_mask)
    if getattr(student_out, "start_logits", None) is not None:
        return 0.5 * (distillation_loss(student_out.start_logits, teacher_out.start_logits, temperature)
                      + distillation_loss(student_out.end_logits, teacher_out.end_logits, temperature))
    raise ValueError(f"distillation needs a model output with `logits` or `start_logits`/`end_logits`; "
                     f"{type(student_out).__name__} has neither")


def hidden_distillation_loss(student_hidden: tuple[torch.Tensor, ...],
                             teacher_hidden: tuple[torch.Tensor, ...],
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over transformer layers of ``||h_s - h_t||^2 / ||h_t||^2`` on real tokens.

    Takes the ``hidden_states`` tuples of HF models (embedding output first, then one per
    layer); the embedding output is skipped. Relative per layer, so layers whose hidden
    states are large (BERT's outlier dimensions grow with depth) do not drown the others.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"layer-wise distillation needs as many layers in the student as in "
                         f"the teacher, got {len(student_hidden) - 1} and {len(teacher_hidden) - 1}")
    losses = []
    for s, t in zip(student_hidden[1:], teacher_hidden[1:]):
        if s.shape != t.shape:
            raise ValueError(f"layer-wise distillation needs the same hidden-state shape in "
                             f"student and teacher, got {tuple(s.shape)} and {tuple(t.shape)} "
                             "(pruning that changes the hidden size cannot use distill_hidden_weight)")
        t = t.detach().to(s.dtype)
        err, ref = (s - t).square().sum(-1), t.square().sum(-1)
        if attention_mask is not None:
            keep = attention_mask.to(s.dtype)
            err, ref = err * keep, ref * keep
        losses.append(err.sum() / ref.sum().clamp_min(torch.finfo(s.dtype).tiny))
    return torch.stack(losses).mean()


def augment_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prob: float,
                   special_ids: Iterable[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``input_ids`` (batch, seq) in which each real (attention mask 1), non-special
    token is replaced with probability ``prob`` by a token drawn uniformly from all real,
    non-special tokens of the batch (so in proportion to their counts). Padding and special
    tokens ([CLS], [SEP], …) never change and are never drawn."""
    if not 0 <= prob <= 1:
        raise ValueError(f"augment_tokens: prob must be in [0, 1], got {prob!r}")
    ids = input_ids.clone()
    candidate = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    special = torch.as_tensor(list(special_ids), dtype=ids.dtype, device=ids.device)
    if special.numel():
        candidate &= ~torch.isin(ids, special)
    pool = ids[candidate]
    if pool.numel() == 0 or prob == 0:
        return ids
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    replace = candidate & (draw < prob)
    n = int(replace.sum())
    if n:
        ids[replace] = pool[torch.randint(pool.numel(), (n,), generator=generator, device=ids.device)]
    return ids
