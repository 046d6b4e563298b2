"""The fine-tuning loop of every task (HF models whose ``model(**batch).loss`` is the task loss).

``finetune`` is a plain AdamW loop with linear warmup / decay. It only touches
``model.parameters()`` and ``model(**batch).loss``, so models whose ``nn.Linear`` layers
were replaced by subclasses with extra Parameters (AnalogLinear) train unchanged, and an
``after_step(model)`` hook runs after every optimizer step (weight clipping, pruning masks).
With ``distill_weight > 0`` a frozen ``teacher`` (e.g. the digital model before HWA
fine-tuning, or the dense model before pruning) adds a knowledge-distillation term on the
logits; with ``distill_hidden_weight > 0`` one on every transformer layer's output (layer-wise
distillation, as TinyBERT / CoFi pruning use to recover pruned models); with
``augment_prob > 0`` the same distillation terms also run on a token-replaced copy of every
batch, so the student learns the teacher's function on inputs the teacher has not
memorised (the losses and the augmentation are in ``distill.py``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .averaging import WeightAverage
from .checkpoint import device_of as _device_of, nonfinite_parameters, predict, save_checkpoint, to_device as _to
from .distill import augment_tokens, distillation_loss, hidden_distillation_loss

__all__ = ["FinetuneConfig", "FinetuneHistory", "distillation_loss", "hidden_distillation_loss", "augment_tokens",
           "unlabelled", "finetune", "total_steps", "predict", "save_checkpoint"]


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters. ``None`` means off (no clipping, no cap)."""

    learning_rate: float = 2e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    epochs: int = 3
    """Passes over the training set."""
    batch_size: int = 32
    """Training batch size."""
    weight_decay: float = 0.01
    """AdamW weight decay of the matrices (biases, LayerNorm and other vectors get none)."""
    warmup_ratio: float = 0.1
    """Share of the optimizer steps spent warming the learning rate up from 0, in [0, 1)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping; None = no clipping."""
    seed: int = 0
    """Seeds dropout and the augmentation draws; a study also seeds the batch order from it
    (its `best_of` candidate k uses seed + k)."""
    max_train_examples: int | None = None
    """Train on a seeded subset of this many examples; None = all."""
    max_eval_examples: int | None = None
    """Evaluate on a seeded subset of this many dev examples; None = all."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (caps `epochs`); None = no cap."""
    distill_weight: float = 0.0
    """Knowledge distillation from the teacher passed to `finetune(teacher=)`: the loss is
    (1 − w)·task loss + w·T²·KL(teacher_T ‖ student_T) (MSE to the teacher's output for
    regression tasks), w in [0, 1]. 0 = off."""
    distill_temperature: float = 2.0
    """Temperature T of the logit distillation."""
    distill_hidden_weight: float = 0.0
    """Layer-wise distillation: + w_h · the mean over the transformer layers of the relative
    squared error ‖h_student − h_teacher‖² / ‖h_teacher‖² of each layer's output hidden states
    (real tokens only). Needs the same hidden size in both (true for FFN / row pruning). 0 = off."""
    augment_prob: float = 0.0
    """Distillation on augmented inputs: every batch also goes through teacher and student as
    a copy in which each real, non-special token is replaced with this probability by another
    token of the batch (`distill.augment_tokens`); needs a teacher and the tokenizer's
    special ids; about doubles a step's cost. 0 = off."""
    augment_weight: float = 1.0
    """Weight of the logit distillation term (and of the layer-wise one when
    `distill_hidden_weight` > 0) on the augmented copy."""
    eval_every: int | None = None
    """Dev-set evaluations: `finetune(..., score=)` is evaluated at the start, every this many
    optimizer steps and at the end; None = no evaluations."""
    keep_best: bool = False
    """Restore the best-scoring evaluated state at the end (as the HF Trainer's
    load_best_model_at_end); needs `eval_every`."""
    ema_decay: float | None = None
    """Weight averaging: keep an exponential moving average of the trainable parameters,
    ema ← d·ema + (1 − d)·params after every optimizer step (after `after_step`: a fixed pruning
    mask and weight clipping hold in the average too, masks that change during training do
    not), starting from the weights training starts from. The averaged weights are what dev
    evaluations score and what the model holds at the end (Polyak averaging; 0.99 averages
    ~the last 100 steps and damps the step-to-step swings of fine-tuning on small tasks); the
    live weights train exactly as without. None = off."""

    def __post_init__(self):
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None (no clipping), "
                             f"got {self.max_grad_norm}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in [0, 1] (0 = no distillation), "
                             f"got {self.distill_weight}")
        if not (self.distill_hidden_weight >= 0 and math.isfinite(self.distill_hidden_weight)):
            raise ValueError(f"distill_hidden_weight must be a finite number >= 0 (0 = off), "
                             f"got {self.distill_hidden_weight}")
        if not (0 <= self.augment_prob < 1):
            raise ValueError(f"augment_prob must be in [0, 1) (the share of tokens replaced in the "
                             f"augmented copy; 0 = off), got {self.augment_prob}")
        if not (self.augment_weight >= 0 and math.isfinite(self.augment_weight)):
            raise ValueError(f"augment_weight must be a finite number >= 0, got {self.augment_weight}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ValueError(f"distill_temperature must be a finite number > 0, "
                             f"got {self.distill_temperature}")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float))
                                               and 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in (0, 1) (e.g. 0.99 averages about the last 100 "
                             f"steps) or null (off), got {self.ema_decay!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"keep_best must be true or false, got {self.keep_best!r}")
        if self.keep_best and self.eval_every is None:
            raise ValueError("keep_best needs eval_every (optimizer steps between dev "
                             "evaluations), e.g. eval_every: 50")
        for name in ("max_train_examples", "max_eval_examples", "max_steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None (no cap), got {value!r}")

    # the options that need `finetune(..., teacher=)` when > 0
    TEACHER_FIELDS: ClassVar[tuple] = ("distill_weight", "distill_hidden_weight", "augment_prob")

    @property
    def needs_teacher(self) -> bool:
        """Whether `finetune` needs a teacher model (a distillation term or augmentation is on)."""
        return any(getattr(self, name) > 0 for name in self.TEACHER_FIELDS)


@dataclass
class FinetuneHistory:
    """Per-step training loss and learning rate (the rate the step was taken with); the dev
    evaluations ``(optimizer steps done, score)`` and the step whose state was kept."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None

    @property
    def steps(self) -> int:
        return len(self.losses)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Matrices decay; biases, LayerNorm weights and per-layer scalars (ndim < 2) do not.
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _linear_warmup_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def unlabelled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of a batch: everything but its labels (calibration, teachers)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()


def total_steps(cfg: FinetuneConfig, train_loader) -> int:
    """Optimizer steps `finetune` takes: `epochs` passes over the loader, capped by `max_steps`."""
    total = cfg.epochs * len(train_loader)
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def finetune(model: nn.Module, train_loader: Iterable[dict[str, torch.Tensor]],
             cfg: FinetuneConfig, after_step: Callable[[nn.Module], None] | None = None,
             progress: bool = True,
             extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
             teacher: nn.Module | None = None,
             score: Callable[[nn.Module], float | None] | None = None,
             special_ids: Iterable[int] | None = None,
             higher_is_better: bool = True) -> FinetuneHistory:
    """Train ``model`` in place on ``train_loader`` batches; returns the loss history.

    ``cfg.seed`` seeds torch's RNG (dropout); the batch order comes from the loader's own
    generator (``make_loader(..., seed=)``). ``cfg.batch_size`` and the example caps are
    for whoever builds the loader; here only the optimisation fields are used. The model
    is left in eval mode. ``extra_loss(model)`` is added to the task loss every step
    (e.g. the ADMM penalty of ``pruning.ADMMPruner``). ``teacher`` (frozen, run in eval mode
    without gradients) is required when ``cfg.distill_weight > 0`` and unused otherwise.
    ``score(model)`` (the dev metric, better when higher — or lower with
    ``higher_is_better=False``, e.g. a perplexity; ``None`` = this state is not a
    candidate, e.g. before gradual pruning reached its final ratio) is required when
    ``cfg.eval_every`` is set; it runs with torch's RNG state saved and restored, so the
    training trajectory is the same with or without evaluations. ``special_ids`` (the
    tokenizer's ``all_special_ids``) are the tokens augmentation must not replace; required
    when ``cfg.augment_prob > 0``. The augmentation draws from its own generator seeded with
    ``cfg.seed``.
    """
    augment = cfg.augment_prob > 0
    for name in FinetuneConfig.TEACHER_FIELDS:
        if getattr(cfg, name) > 0 and teacher is None:
            raise ValueError(f"{name}={getattr(cfg, name)} needs a teacher model: pass "
                             f"finetune(..., teacher=model) or set {name}: 0")
    if augment and special_ids is None:
        raise ValueError(f"augment_prob={cfg.augment_prob} needs the tokens it must not replace: "
                         "pass finetune(..., special_ids=tokenizer.all_special_ids)")
    if cfg.eval_every is not None and score is None:
        raise ValueError(f"eval_every={cfg.eval_every} needs a score function: pass "
                         "finetune(..., score=lambda m: dev metric) or set eval_every: null")
    if cfg.needs_teacher:
        teacher.eval()
    torch.manual_seed(cfg.seed)
    loop = _Loop(model, train_loader, cfg, after_step, extra_loss, teacher, score, special_ids, higher_is_better)
    return loop.run(progress)


class _Loop:
    """The state of one `finetune` run: optimizer and schedule, the teacher terms, the dev
    evaluations and the best state, the weight average. `run` trains; `step` is one
    optimizer step."""

    def __init__(self, model, train_loader, cfg: FinetuneConfig, after_step, extra_loss, teacher, score,
                 special_ids, higher_is_better: bool):
        self.model, self.loader, self.cfg = model, train_loader, cfg
        self.after_step, self.extra_loss, self.teacher, self.score = after_step, extra_loss, teacher, score
        self.higher_is_better = higher_is_better
        self.distill, self.hidden = cfg.distill_weight > 0, cfg.distill_hidden_weight > 0
        self.augment = cfg.augment_prob > 0
        self.total = total_steps(cfg, train_loader)
        warmup = int(cfg.warmup_ratio * self.total)
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           _linear_warmup_decay(self.total, warmup))
        self.device = _device_of(model)
        self.history = FinetuneHistory()
        self.best: dict = {}
        self.aug_gen = torch.Generator().manual_seed(cfg.seed) if self.augment else None
        self.special = list(special_ids) if self.augment else []
        self.ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay is not None else None

    def teacher_terms(self, out, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logit KD, layer-wise term or None) of the student's output `out` against the
        teacher on the same batch (labels are not the teacher's business)."""
        cfg = self.cfg
        with torch.no_grad():
            tgt = self.teacher(**unlabelled(batch), output_hidden_states=self.hidden)
        soft = distillation_loss(out.logits, tgt.logits, cfg.distill_temperature)
        if not self.hidden:
            return soft, None
        return soft, cfg.distill_hidden_weight * hidden_distillation_loss(
            out.hidden_states, tgt.hidden_states, batch.get("attention_mask"))

    def dev_eval(self) -> None:
        model, history, best = self.model, self.history, self.best
        # with weight averaging the averaged weights are the candidate: scored and kept
        with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
            rng = torch.get_rng_state()
            value = self.score(model)
            torch.set_rng_state(rng)
            model.train()
            if value is None:
                return
            history.evals.append((history.steps, float(value)))
            if self.cfg.keep_best and ("score" not in best or (
                    value > best["score"] if self.higher_is_better else value < best["score"])):
                best.update(score=value, step=history.steps,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})

    def loss(self, batch: dict) -> torch.Tensor:
        """The training loss of one batch: task loss, distillation terms, extra loss."""
        cfg, model = self.cfg, self.model
        output = model(**batch, output_hidden_states=True) if self.hidden else model(**batch)
        loss = output.loss
        if self.distill or self.hidden:
            soft, layers = self.teacher_terms(output, batch)
            if self.distill:
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * soft
            if self.hidden:
                loss = loss + layers
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(model)
        return loss

    def augmented_loss(self, batch: dict) -> torch.Tensor:
        """The distillation terms on a token-replaced copy of the batch, backpropagated
        (a second backward: the first graph is freed before this one is built)."""
        cfg = self.cfg
        aug = dict(batch, input_ids=augment_tokens(batch["input_ids"].cpu(), _cpu(batch.get("attention_mask")),
                                                   cfg.augment_prob, self.special, self.aug_gen).to(self.device))
        out = self.model(**unlabelled(aug), output_hidden_states=self.hidden)
        soft, layers = self.teacher_terms(out, aug)
        aug_loss = cfg.augment_weight * (soft if layers is None else soft + layers)
        aug_loss.backward()
        return aug_loss.detach()

    def step(self, batch: dict) -> float:
        """One optimizer step on `batch`; returns its loss."""
        cfg, model = self.cfg, self.model
        loss = self.loss(batch)
        if not torch.isfinite(loss.detach()).all():
            raise _nonfinite_loss(model, loss, len(self.history.losses) + 1, self.total)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.augment:
            loss = loss.detach() + self.augmented_loss(batch)
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        self.history.learning_rates.append(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        if self.after_step is not None:
            self.after_step(model)
        if self.ema is not None:
            self.ema.update()
        return float(loss.detach())

    def run(self, progress: bool) -> FinetuneHistory:
        cfg, model, history, total = self.cfg, self.model, self.history, self.total
        model.train()
        if cfg.eval_every is not None:
            self.dev_eval()
        bar = tqdm(total=total, desc="fine-tune", disable=not progress, leave=False)
        while history.steps < total:
            for batch in self.loader:
                history.losses.append(self.step(_to(batch, self.device)))
                bar.update(1)
                bar.set_postfix(loss=f"{history.losses[-1]:.4f}")
                if cfg.eval_every is not None and (history.steps % cfg.eval_every == 0 or history.steps >= total):
                    self.dev_eval()
                if history.steps >= total:
                    break
        bar.close()
        if self.best:
            model.load_state_dict(self.best["state"])
            history.best_step = self.best["step"]
        elif self.ema is not None:
            self.ema.copy_to_model()
        model.eval()
        return history


def _nonfinite_loss(model: nn.Module, loss: torch.Tensor, step: int, total: int) -> FloatingPointError:
    bad = nonfinite_parameters(model)
    cause = (f"the model holds non-finite values in {bad[:5]}{' …' if len(bad) > 5 else ''} (a broken "
             "checkpoint: re-create it)" if bad else
             "the weights are finite, so the step before diverged: lower finetune.learning_rate or set "
             "finetune.max_grad_norm")
    return FloatingPointError(f"fine-tuning stopped at optimizer step {step} of {total}: the training loss "
                              f"is {float(loss.detach())}; {cause}. Nothing was saved.")
