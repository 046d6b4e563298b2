"""The fine-tuning steps of a study: the digital model and the HWA model of a task.

Each step trains `best_of` candidates that differ only in their seed (dropout, batch
order) and keeps the best on the task's dev set — seed 001 picks the best of 5 training
seeds per task (SPEC §4.1). Digital candidates are ranked by their digital dev metric;
HWA candidates by their dev metric on tiles (compensated, at the sweep's last time point,
mean of `select_repeats` device instances drawn apart from the sweep's). Candidate 0 is
the single run of `best_of: 1`, so studies without `best_of` are unchanged. The chosen
model is saved as the step's checkpoint (reused on re-runs), with `candidates.json`
listing every candidate's seed and score. With `eval_every` / `keep_best` in the recipe, a
candidate is itself the best of its dev evaluations during training (digital candidates
scored digitally, HWA candidates on tiles as above); the curve goes to `history.json`.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Tuple

import tempfile

import torch
from torch import nn

from ..inference import drift, program
from ..logs import get_logger
from ..nn.convert import analog_layers, analogize
from ..training.finetune import FinetuneConfig, finetune, save_checkpoint
from ..training.hwa import hwa_after_step, prepare_hwa, remove_hwa
from ..training.teacher_text import teacher_text, window_batches
from .folder import checkpoint_saved, require_finite
from .sweep import set_input_ranges

_SELECT_SEED = 7_777_777  # program seeds of the ranking, apart from the sweep's
logger = get_logger(__name__)


def analog_dev_headline(cfg, data, model: nn.Module, ranges: Dict[str, float]) -> float:
    """Mean dev headline of `model` on tiles (its DAC ranges `ranges`), compensated, at the
    sweep's last time point, over `cfg.select_repeats` device instances."""
    analog = analogize(copy.deepcopy(model), copy.deepcopy(cfg.analog))
    set_input_ranges(analog, ranges)
    t = max(cfg.sweep.times_seconds)
    scores = []
    for r in range(cfg.select_repeats):
        program(analog, seed=_SELECT_SEED + r)
        drift(analog, t)
        scores.append(data.dev_headline(analog))
    return sum(scores) / len(scores)


def _best_of(cfg, data, what: str, train: Callable[[int], Tuple[nn.Module, dict, float]],
             path: Path, tok):
    """Train `cfg.best_of` candidates with `train(k) -> (model, extra, dev score)` (candidate
    k: fine-tuning seed + k); save the best to `path` with its `history.json` (and
    `candidates.json` when there was a choice). Returns (model, extra) of the winner."""
    best, rows = None, []
    for k in range(cfg.best_of):
        model, extra, score = train(k)
        rows.append({"candidate": k, "seed_offset": k, "dev_score": score,
                     "train_seconds": round(extra["history"]["seconds"], 1)})
        if cfg.best_of > 1:
            logger.info(f"{data.name}: {what} candidate {k + 1}/{cfg.best_of}: dev {100 * score:.2f}")
        if best is None or data.better(score, best[2]):
            best = (model, extra, score, k)
    model, extra, score, k = best
    save_checkpoint(model, tok, path)
    (path / "history.json").write_text(json.dumps(extra["history"]))
    if cfg.best_of > 1:
        logger.info(f"{data.name}: keeping {what} candidate {k + 1} (dev {100 * score:.2f})")
        (path / "candidates.json").write_text(json.dumps({"chosen": k, "candidates": rows}, indent=1))
    return model, extra


def digital_model(cfg, data, base: nn.Module, tok, out: Path, progress: bool) -> nn.Module:
    if not data.task.digital_finetune:  # e.g. a causal LM: the pre-trained model is the digital model
        logger.info(f"{data.name}: no digital fine-tuning (the task evaluates the pre-trained model)")
        return base.eval()
    path = out / "checkpoints" / data.name / "digital"
    if checkpoint_saved(path):
        logger.info(f"{data.name}: reusing digital checkpoint {path}")
        return load_reused(data, path)
    fcfg = cfg.finetune_for(data.name)
    logger.info(f"{data.name}: digital fine-tuning ({len(data.train)} examples, {fcfg.budget()}, "
         f"lr {fcfg.learning_rate:g}" + (f", best of {cfg.best_of} seeds" if cfg.best_of > 1 else "") + ")")

    def train(k: int):
        fk: FinetuneConfig = replace(fcfg, seed=fcfg.seed + k)
        model, t = copy.deepcopy(base), time.time()
        hist = finetune(model, data.train_loader(fk.batch_size, fk.seed), fk, progress=progress,
                        score=(lambda m: data.dev_headline(m)) if fk.eval_every else None,
                        higher_is_better=data.higher_is_better, state_dir=_state_dir(path, fk, k))
        log_evals(data.name, "digital", hist)
        score = data.dev_headline(model) if cfg.best_of > 1 else float("nan")
        return model, {"history": _history(hist, t)}, score

    model, extra = _best_of(cfg, data, "digital", train, path, tok)
    shutil.rmtree(_state_root(path), ignore_errors=True)
    return model.eval()


def hwa_model(cfg, data, base: nn.Module, digital: nn.Module, tok, out: Path, progress: bool):
    """HWA fine-tune; returns (plain HF model with the trained weights, input ranges)."""
    path = out / "checkpoints" / data.name / "hwa"
    ranges_path = path / "input_ranges.json"
    if checkpoint_saved(path) and ranges_path.exists():
        logger.info(f"{data.name}: reusing HWA checkpoint {path}")
        try:
            ranges = json.loads(ranges_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{ranges_path} is not valid JSON ({e}); delete the folder {path} to re-make "
                             "the HWA model") from None
        return load_reused(data, path), ranges
    h = cfg.hwa
    fcfg = hwa_recipe(cfg, data)
    logger.info(f"{data.name}: HWA fine-tuning ({fcfg.budget()}, lr {fcfg.learning_rate:g}, "
         f"noise {h.recipe.weight_noise} x{h.recipe.weight_noise_scale}"
         + (f", distilled from the digital model w={fcfg.distill_weight:g}" if fcfg.distill_weight > 0 else "")
         + (f", best of {cfg.best_of} seeds on tiles" if cfg.best_of > 1 else "")
         + (f", on {h.teacher_text.sequences} sequences the digital model wrote" if h.teacher_text else "") + ")")
    windows = _teacher_windows(h.teacher_text, data, digital) if h.teacher_text is not None else None

    def train(k: int):
        fk: FinetuneConfig = replace(fcfg, seed=fcfg.seed + k)
        model = copy.deepcopy(digital if h.init_from == "digital" else base)
        analogize(model, copy.deepcopy(cfg.analog))
        prepare_hwa(model, h.recipe, calib_batches=data.calib, seed=fk.seed)
        t = time.time()
        loader = (window_batches(windows, fk.batch_size, fk.seed + 7) if windows is not None
                  else data.train_loader(fk.batch_size, fk.seed + 7))
        hist = finetune(model, loader, fk, state_dir=_state_dir(path, fk, k),
                        after_step=hwa_after_step(h.recipe), progress=progress,
                        teacher=digital if fk.needs_teacher else None, special_ids=data.special_ids,
                        score=(lambda m: _tiles_score(cfg, data, m)) if fk.eval_every else None,
                        higher_is_better=data.higher_is_better)
        log_evals(data.name, "HWA (on tiles)", hist)
        remove_hwa(model)
        ranges = _ranges(model)
        score = float("nan")
        if cfg.best_of > 1:  # ranked on tiles: a plain copy to analogize afresh
            model = _plain(data, model)
            score = analog_dev_headline(cfg, data, model, ranges)
        return model, {"ranges": ranges, "history": _history(hist, t)}, score

    _, extra = _best_of(cfg, data, "HWA", train, path, tok)
    ranges_path.write_text(json.dumps(extra["ranges"], indent=1))
    shutil.rmtree(_state_root(path), ignore_errors=True)
    return data.task.load_trained(path), extra["ranges"]


def is_causal_lm(task) -> bool:
    """Whether a task trains a causal LM (its model class is `AutoModelForCausalLM`)."""
    return task.auto_class == "AutoModelForCausalLM"


def hwa_recipe(cfg, data) -> FinetuneConfig:
    """The HWA fine-tuning recipe of a task: `hwa.finetune` over the digital recipe. A causal LM
    distils from the digital model (distill_weight 1: per-token KL to its logits, no
    next-token loss) unless `hwa.finetune` sets `distill_weight` itself."""
    fcfg = cfg.finetune_for(data.name, cfg.hwa.finetune)
    if is_causal_lm(data.task) and "distill_weight" not in cfg.hwa.finetune:
        fcfg = replace(fcfg, distill_weight=1.0)
    return fcfg


def _teacher_windows(tcfg, data, digital: nn.Module):
    """`hwa.teacher_text`: sequences the digital model samples, their first tokens drawn from the
    tokens of the task's training windows."""
    first = torch.cat([data.train[i]["input_ids"].flatten() for i in range(len(data.train))])
    logger.info(f"{data.name}: sampling {tcfg.sequences} sequences of {tcfg.tokens} tokens from the digital "
                f"model (seed {tcfg.seed})")
    return teacher_text(digital, tcfg, first_tokens=first)


def _state_root(path: Path) -> Path:
    return path.parent / (path.name + ".train-state")


def _state_dir(path: Path, fk: FinetuneConfig, k: int):
    """The training-state folder of candidate k of the fine-tune saved to `path` (`checkpoint_every`);
    removed once the step's checkpoint is saved. None when no states are kept."""
    return None if fk.checkpoint_every is None else _state_root(path) / f"candidate-{k}"


def load_reused(data, path: Path, load=None) -> nn.Module:
    """A checkpoint the study saved earlier, readable and finite, or an error naming the
    folder to delete so the step re-makes it. `load(path)` reads it (default: the task's
    `load_trained`)."""
    fix = f"delete the folder {path} and run the study again to re-make it"
    try:
        model = (load or data.task.load_trained)(path)
    except Exception as e:  # a truncated / corrupt file fails in safetensors, json or torch
        e = e.__cause__ or e  # the reader's own error, not the advice for a user-given model
        first = (str(e).splitlines() or [""])[0][:300]
        raise ValueError(f"the checkpoint {path} cannot be read ({type(e).__name__}: {first}); {fix}") from None
    return require_finite(model, f"the checkpoint {path}", fix)


def _ranges(model: nn.Module) -> Dict[str, float]:
    return {name: float(layer.input_range.detach()) for name, layer in analog_layers(model)}


def _tiles_score(cfg, data, model: nn.Module) -> float:
    """Dev headline on tiles of an HWA model in training (evaluated on a plain copy)."""
    trained = remove_hwa(copy.deepcopy(model))
    return analog_dev_headline(cfg, data, _plain(data, trained), _ranges(trained))


def _history(hist, started: float) -> dict:
    return {"losses": hist.losses, "seconds": time.time() - started,
            "evals": hist.evals, "best_step": hist.best_step}


def log_evals(task: str, what: str, hist) -> None:
    if hist.evals:
        curve = ", ".join(f"{s}: {100 * v:.2f}" for s, v in hist.evals)
        kept = "" if hist.best_step is None else f"; kept step {hist.best_step}"
        logger.info(f"{task}: {what} dev score by step: {curve}{kept}")


def _plain(data, model: nn.Module) -> nn.Module:
    """The HF model with plain nn.Linear layers (an HWA model after `remove_hwa` still has
    AnalogLinear modules): a save/load round trip through a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, None, tmp)
        return data.task.load_trained(tmp)
