"""HWA and distillation with the Hugging Face `Trainer` instead of `finetune`.

    from analogformer.training import HWACallback, DistillationTrainer, param_groups, prepare_hwa
    prepare_hwa(model, hwa_cfg, calib_batches=batches)
    opt = torch.optim.AdamW(param_groups(model, lr=1e-5, input_range_lr=hwa_cfg.input_range_lr))
    trainer = DistillationTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                                  teacher=digital_model, distill_weight=1.0, distill_temperature=2.0,
                                  optimizers=(opt, None), callbacks=[HWACallback(hwa_cfg)])
    trainer.train(); remove_hwa(model)

`HWACallback` clips the weights and keeps DAC ranges positive after every optimizer step (what
`hwa_after_step` does in `finetune`) and, under `torchrun` / `accelerate launch`, seeds each process's
noise draws apart (the Trainer seeds every process alike; its DDP sums the gradients of every
Parameter, DAC ranges included, so the weights, ranges and clipping stay identical); `DistillationTrainer` is a `Trainer` whose loss is
(1 − w)·task loss + w·T²·KL(teacher ‖ student), per token for language models
(`distill.output_distillation_loss`). The classes are built on first use, so importing analogformer
does not import the Trainer.
"""
from __future__ import annotations

import functools

import torch

from .distill import output_distillation_loss
from .finetune import unlabelled

__all__ = ["trainer_classes"]


@functools.lru_cache(maxsize=None)
def trainer_classes() -> dict:
    """{"HWACallback": ..., "DistillationTrainer": ...}, built once."""
    try:
        from transformers import Trainer, TrainerCallback
    except ImportError as err:  # transformers is optional for plain PyTorch models
        raise ImportError("HWACallback and DistillationTrainer need transformers (`pip install transformers`)") from err
    from .distributed import Ranks
    from .hwa import hwa_after_step

    class HWACallback(TrainerCallback):
        """HF `Trainer` callback: clips weights and keeps DAC ranges positive after every
        optimizer step. Give the Trainer `optimizers=(AdamW(param_groups(...)), None)`
        to train the ranges at their own learning rate.

        With several processes it reseeds the global torch RNG (the HWA weight noise, ADC
        output-noise offsets, dropout) of every rank but 0 at the start of training with
        `Ranks.seed(args.seed)`: the Trainer seeds all processes with `args.seed`, so they would
        otherwise draw the same noise. Rank 0 keeps its draws (those of a single process); a
        resumed Trainer restores each rank's saved RNG state after this."""

        def __init__(self, hwa_cfg):
            self.after_step = hwa_after_step(hwa_cfg)

        def on_train_begin(self, args, state, control, **kwargs):
            ranks = Ranks.current()
            if ranks.rank > 0:
                torch.manual_seed(ranks.seed(args.seed))
            return control

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is not None:
                self.after_step(model)
            return control

    class DistillationTrainer(Trainer):
        """A `Trainer` that distils from a frozen `teacher`: loss = (1 − w)·task loss + w·T²·KL,
        per real token for (batch, seq, vocab) logits. With gradient accumulation the loss of
        each micro-batch is divided by the number of accumulation steps (the loss is a mean
        over its own tokens)."""

        def __init__(self, *args, teacher: torch.nn.Module, distill_weight: float = 1.0,
                     distill_temperature: float = 2.0, **kwargs):
            if not 0 < distill_weight <= 1:
                raise ValueError(f"DistillationTrainer: distill_weight must be in (0, 1], got {distill_weight!r}")
            if not distill_temperature > 0:
                raise ValueError(f"DistillationTrainer: distill_temperature must be > 0, got {distill_temperature!r}")
            super().__init__(*args, **kwargs)
            self.teacher = teacher.eval()
            self.distill_weight, self.distill_temperature = float(distill_weight), float(distill_temperature)
            # our loss is a per-token mean: the Trainer divides it by the accumulation steps
            self.model_accepts_loss_kwargs = False
            self.loss_is_scaled_for_ga = False  # (transformers >= 5 reads this first)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            w = self.distill_weight
            student_inputs = inputs if w < 1 else unlabelled(inputs)
            outputs = model(**student_inputs)
            with torch.no_grad():
                teacher_out = self.teacher(**unlabelled(inputs))
            loss = output_distillation_loss(outputs, teacher_out, self.distill_temperature,
                                            inputs.get("attention_mask"))
            if w < 1:
                loss = (1 - w) * outputs.loss + w * loss
            return (loss, outputs) if return_outputs else loss

    return {"HWACallback": HWACallback, "DistillationTrainer": DistillationTrainer}
