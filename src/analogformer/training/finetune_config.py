"""The fine-tuning recipe (`FinetuneConfig`): one dataclass, validated at construction; the
fields are the YAML keys of a study's `finetune`, `hwa.finetune` and `pruning.retrain`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["FinetuneConfig"]


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters. ``None`` means off (no clipping, no cap)."""

    learning_rate: float = 2e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    epochs: int = 3
    """Passes over the training set."""
    batch_size: int = 32
    """Training batch size (of one forward; an optimizer step sees `gradient_accumulation_steps` of them)."""
    gradient_accumulation_steps: int = 1
    """Batches whose gradients are summed into one optimizer step, each weighted by its share of
    the step's examples: with the noise off, the step of one batch of k·batch_size examples
    (up to float rounding). An epoch's last step takes the batches left. 1 = off."""
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
    checkpoint_every: int | None = None
    """Save the training state (weights, optimizer, schedule, position in the data, RNG states,
    weight average, history) every this many optimizer steps to the folder
    `finetune(state_dir=)`; a run given a folder that holds a state resumes from it, mid-epoch
    too, and trains exactly as without the interruption (when the loader's order comes from
    its own seeded generator). None = no training-state checkpoints."""
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
        g = self.gradient_accumulation_steps
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ValueError(f"gradient_accumulation_steps must be an int >= 1 (1 = one batch per optimizer "
                             f"step), got {g!r}")
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
        for name in ("max_train_examples", "max_eval_examples", "max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None (no cap), got {value!r}")

    # the options that need `finetune(..., teacher=)` when > 0
    TEACHER_FIELDS: ClassVar[tuple] = ("distill_weight", "distill_hidden_weight", "augment_prob")

    def budget(self) -> str:
        """The training length for a log line: "3 epoch(s)", or "3 epoch(s), at most 40 steps"."""
        return f"{self.epochs} epoch(s)" + (f", at most {self.max_steps} steps" if self.max_steps is not None else "")

    @property
    def needs_teacher(self) -> bool:
        """Whether `finetune` needs a teacher model (a distillation term or augmentation is on)."""
        return any(getattr(self, name) > 0 for name in self.TEACHER_FIELDS)
