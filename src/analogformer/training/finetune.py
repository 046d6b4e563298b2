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
memorised (the losses and the augmentation are in ``distill.py``). Under ``torchrun`` (a
process group of several processes) it trains data-parallel: each process takes its share of
every batch and the gradients are summed over the processes (``distributed.py``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .averaging import WeightAverage
from .checkpoint import device_of as _device_of, nonfinite_parameters, predict, save_checkpoint, to_device as _to
from .distributed import Ranks, examples as _examples
from .distill import augment_tokens, distillation_loss, hidden_distillation_loss, output_distillation_loss
from .finetune_config import FinetuneConfig
from .train_state import load_train_state, save_train_state

__all__ = ["FinetuneConfig", "FinetuneHistory", "distillation_loss", "hidden_distillation_loss", "augment_tokens",
           "unlabelled", "finetune", "total_steps", "predict", "save_checkpoint"]


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


LABEL_KEYS = ("labels", "start_positions", "end_positions")


def unlabelled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of a batch: everything but its labels (classification / LM labels, QA
    answer positions) — for calibration and teachers."""
    return {k: v for k, v in batch.items() if k not in LABEL_KEYS}


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()


def total_steps(cfg: FinetuneConfig, train_loader) -> int:
    """Optimizer steps `finetune` takes: `epochs` passes over the loader (one step per
    `gradient_accumulation_steps` batches, an epoch's last step on the batches left), capped
    by `max_steps`."""
    k = cfg.gradient_accumulation_steps
    total = cfg.epochs * ((len(train_loader) + k - 1) // k)
    return total if cfg.max_steps is None else min(total, cfg.max_steps)


def finetune(model: nn.Module, train_loader: Iterable[dict[str, torch.Tensor]],
             cfg: FinetuneConfig, after_step: Callable[[nn.Module], None] | None = None,
             progress: bool = True,
             extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
             teacher: nn.Module | None = None,
             score: Callable[[nn.Module], float | None] | None = None,
             special_ids: Iterable[int] | None = None,
             higher_is_better: bool = True,
             state_dir: str | Path | None = None) -> FinetuneHistory:
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
    ``cfg.seed``. ``state_dir`` (required by ``cfg.checkpoint_every``) is the folder of the
    training-state checkpoints (`train_state.py`): a run given a folder holding a state resumes
    from it, and the state is left there (a finished run resumed returns at once).

    With an initialised `torch.distributed` process group of N > 1 processes every process
    passes the same loader and recipe; each trains on its share of every batch (the loader's
    batch is the global one), the gradients are summed over the processes, the random draws
    are seeded per process (rank 0 draws what one process draws), ``score`` runs on rank 0 only
    and the training state is written by rank 0 (docs/distributed.md).
    """
    augment = cfg.augment_prob > 0
    for name in FinetuneConfig.TEACHER_FIELDS:
        if getattr(cfg, name) > 0 and teacher is None:
            raise ValueError(f"{name}={getattr(cfg, name)} needs a teacher model: pass "
                             f"finetune(..., teacher=model) or set {name}: 0")
    if augment and special_ids is None:
        raise ValueError(f"augment_prob={cfg.augment_prob} needs the tokens it must not replace: "
                         "pass finetune(..., special_ids=tokenizer.all_special_ids)")
    if cfg.checkpoint_every is not None and state_dir is None:
        raise ValueError(f"checkpoint_every={cfg.checkpoint_every} needs the folder of the training state: "
                         "pass finetune(..., state_dir=folder) or set checkpoint_every: null")
    if cfg.eval_every is not None and score is None:
        raise ValueError(f"eval_every={cfg.eval_every} needs a score function: pass "
                         "finetune(..., score=lambda m: dev metric) or set eval_every: null")
    if cfg.needs_teacher:
        teacher.eval()
    ranks = Ranks.current(_device_of(model))
    ranks.check_loader(train_loader)
    ranks.broadcast_module(model)  # every process starts from rank 0's model (and weight average)
    torch.manual_seed(ranks.seed(cfg.seed))
    loop = _Loop(model, train_loader, cfg, after_step, extra_loss, teacher, score, special_ids, higher_is_better,
                 ranks)
    return loop.run(progress, None if state_dir is None else Path(state_dir))


class _Loop:
    """The state of one `finetune` run: optimizer and schedule, the teacher terms, the dev
    evaluations and the best state, the weight average. `run` trains; `step` is one
    optimizer step."""

    def __init__(self, model, train_loader, cfg: FinetuneConfig, after_step, extra_loss, teacher, score,
                 special_ids, higher_is_better: bool, ranks: Ranks = Ranks()):
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
        self.ranks = ranks
        self.history = FinetuneHistory()
        self.best: dict = {}
        self.aug_gen = torch.Generator().manual_seed(ranks.seed(cfg.seed)) if self.augment else None
        self.special = list(special_ids) if self.augment else []
        self.ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay is not None else None

    def teacher_terms(self, out, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logit KD, layer-wise term or None) of the student's output `out` against the
        teacher on the same batch (labels are not the teacher's business)."""
        cfg = self.cfg
        with torch.no_grad():
            tgt = self.teacher(**unlabelled(batch), output_hidden_states=self.hidden)
        soft = output_distillation_loss(out, tgt, cfg.distill_temperature, batch.get("attention_mask"))
        if not self.hidden:
            return soft, None
        return soft, cfg.distill_hidden_weight * hidden_distillation_loss(
            out.hidden_states, tgt.hidden_states, batch.get("attention_mask"))

    def dev_eval(self) -> None:
        model, history, best = self.model, self.history, self.best
        # with weight averaging the averaged weights are the candidate: scored and kept
        with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
            rng = torch.get_rng_state()
            value = self.ranks.on_main(self.score, model)  # one evaluation, the same decision everywhere
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

    def augmented_loss(self, batch: dict, weight: float) -> torch.Tensor:
        """The distillation terms on a token-replaced copy of the batch, backpropagated
        times `weight` (a second backward: the first graph is freed before this one is built)."""
        cfg = self.cfg
        aug = dict(batch, input_ids=augment_tokens(batch["input_ids"].cpu(), _cpu(batch.get("attention_mask")),
                                                   cfg.augment_prob, self.special, self.aug_gen).to(self.device))
        out = self.model(**unlabelled(aug), output_hidden_states=self.hidden)
        soft, layers = self.teacher_terms(out, aug)
        aug_loss = cfg.augment_weight * (soft if layers is None else soft + layers)
        (aug_loss * weight if weight != 1.0 else aug_loss).backward()
        return aug_loss.detach()

    def step(self, batches: list[dict]) -> float:
        """One optimizer step on the gradients of `batches` (one, or the micro-batches of a
        gradient-accumulation step, each weighted by its share of the examples); returns the
        step's loss (the same weighted sum). Data-parallel, each process computes its share of
        every batch, weighted by that share, and the gradients and losses are summed."""
        cfg, model, ranks = self.cfg, self.model, self.ranks
        sizes = [_examples(b) for b in batches]
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0 if len(batches) > 1 else None
        for batch, n in zip(batches, sizes):
            weight = 1.0 if len(batches) == 1 else n / sum(sizes)
            part = _to(ranks.shard(batch), self.device)
            share = _examples(part) / n  # 1 in one process
            mine = self.loss(part)
            loss = ranks.average(mine, share)
            if not torch.isfinite(loss.detach()).all():
                raise _nonfinite_loss(model, loss, len(self.history.losses) + 1, self.total)
            w = weight * share
            (mine * w if w != 1.0 else mine).backward()
            if self.augment:
                loss = loss.detach() + ranks.average(self.augmented_loss(part, w), share)
            total = loss.detach() if total is None else total + weight * loss.detach()
        ranks.reduce_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        self.history.learning_rates.append(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        if self.after_step is not None:
            self.after_step(model)
        if self.ema is not None:
            self.ema.update()
        return float(total)

    def _after_step(self, bar, position: tuple[int, int], state_dir: Path | None) -> None:
        cfg, history, total = self.cfg, self.history, self.total
        bar.update(1)
        bar.set_postfix(loss=f"{history.losses[-1]:.4f}")
        if cfg.eval_every is not None and (history.steps % cfg.eval_every == 0 or history.steps >= total):
            self.dev_eval()
        if state_dir is not None and (history.steps % cfg.checkpoint_every == 0 or history.steps >= total):
            save_train_state(state_dir, self, position)

    def run(self, progress: bool, state_dir: Path | None = None) -> FinetuneHistory:
        cfg, model, history, total = self.cfg, self.model, self.history, self.total
        k = cfg.gradient_accumulation_steps
        model.train()
        resumed = load_train_state(state_dir, self) if state_dir is not None else None
        if resumed is None and cfg.eval_every is not None:
            self.dev_eval()
        # a resumed run goes through the data up to where the state was saved without training,
        # so the loader's own generator draws the same orders, then takes the RNG states it had
        skip_to = None if resumed is None else tuple(resumed["position"])  # (epoch, batches consumed ≥ 1)
        bar = tqdm(total=total, initial=history.steps, desc="fine-tune", disable=not (progress and self.ranks.main),
                   leave=False)
        epoch = 0
        while history.steps < total:
            micro: list[dict] = []
            for i, batch in enumerate(self.loader):
                if skip_to is not None:
                    if (epoch, i + 1) == skip_to:
                        self._restore_rng(resumed)
                        skip_to = None
                    continue
                micro.append(batch)  # moved by `step`, after taking this process's share
                if len(micro) == k:
                    history.losses.append(self.step(micro))
                    micro = []
                    self._after_step(bar, (epoch, i + 1), state_dir)
                    if history.steps >= total:
                        break
            else:
                if micro:  # the epoch's last step, on the batches left
                    history.losses.append(self.step(micro))
                    self._after_step(bar, (epoch, len(self.loader)), state_dir)
            epoch += 1
        bar.close()
        if self.best:
            model.load_state_dict(self.best["state"])
            history.best_step = self.best["step"]
        elif self.ema is not None:
            self.ema.copy_to_model()
        model.eval()
        return history

    def _restore_rng(self, state: dict) -> None:
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.aug_gen is not None:
            self.aug_gen.set_state(state["aug_rng"])


def _nonfinite_loss(model: nn.Module, loss: torch.Tensor, step: int, total: int) -> FloatingPointError:
    bad = nonfinite_parameters(model)
    cause = (f"the model holds non-finite values in {bad[:5]}{' …' if len(bad) > 5 else ''} (a broken "
             "checkpoint: re-create it)" if bad else
             "the weights are finite, so the step before diverged: lower finetune.learning_rate or set "
             "finetune.max_grad_norm")
    return FloatingPointError(f"fine-tuning stopped at optimizer step {step} of {total}: the training loss "
                              f"is {float(loss.detach())}; {cause}. Nothing was saved.")
