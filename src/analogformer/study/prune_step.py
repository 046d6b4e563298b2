"""The prune → retrain → compact step of a study (seed 000 ch. 3, seed 003 baselines).

For every method (the main one and the baselines) and every ratio, writes records of the
digital headline metric at three stages — "prune:dense" (before, once), then
"prune-<method>:pruned" (masks applied, no retraining) and "prune-<method>:retrained" —
with `prune_ratio`, `stage` and `method` keys. For the main method it also saves the
compacted, retrained model (evaluated on tiles by the "pruned" conditions of the sweep),
a tile map before/after pruning (tiles freed per block), and the Fig. 3.1 / 3.2 pictures
of the MAC analysis for the first FC2 layer. `pruning.schedule` (a `pruning.Schedule`:
one-shot, gradual, progressive rounds, ADMM) produces each pruned model (`StudyPruneJob` is
what it gets from the study); `pruning.control` adds the dense model retrained with the same
recipe ("prune-none:retrained", ratio 0); `eval_every` / `keep_best` in `pruning.retrain` keep the
retrained state with the best dev score (recorded with `dev_evals` and `best_step`).
"""
from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional

from torch import nn

from ..hardware.mapping import MappingConfig, compare, comparison_markdown, map_model
from ..logs import get_logger
from ..pruning import (calibrate, capture_frames, compact, find_targets, kept_units, linear_weight,
                       load_compacted, reconstruct)
from ..report.figures import plot_delta_heatmap, plot_product_curves, plot_tile_layout
from ..training.finetune import finetune, save_checkpoint, total_steps
from .finetune_step import load_reused, log_evals
from .folder import checkpoint_saved
from .records import RecordLog

logger = get_logger(__name__)


def _load_pruned(data, path: Path) -> nn.Module:
    return load_reused(data, path, lambda p: load_compacted(str(p)).eval())


def _pct(value) -> str:
    """A headline in percent for the log; a record's undefined (null) headline as such."""
    return "undefined" if value is None else f"{100 * value:.2f}"


def ratio_tag(ratio: float) -> str:
    """How a prune ratio appears in model / condition / file names: 1/3 -> "0.333"."""
    return f"{ratio:.3g}"


def pruned_model_key(ratio) -> str:
    """The study's model name for the main method's pruned model at `ratio` (None: the only one)."""
    return "pruned" if ratio is None else f"pruned@{ratio_tag(ratio)}"


def pruned_models(cfg, data, models: Dict[str, nn.Module], tok, out: Path, progress: bool,
                  log: RecordLog) -> Dict[str, nn.Module]:
    """Every pruning run of the study for one task: {model key: compacted, retrained model}
    for the main method at each ratio; baselines only write their records."""
    p = cfg.pruning
    calib = data.unlabelled_batches(p.calibration_batches, cfg.finetune_for(data.name).batch_size, cfg.seed + 3)
    source = models[p.source]
    if p.control:
        _control(cfg, data, source, log, progress)
    stats = SourceStats(source, calib)
    result: Dict[str, nn.Module] = {}
    runs = p.runs()
    rounds: Dict[str, tuple] = {}  # schedules in rounds: label -> (retrained model, masks) of its last round
    for i, (label, pc, is_main) in enumerate(runs):
        ratio = _ratio(pc)
        key = pruned_model_key(ratio if p.ratios else None)
        path = _pruned_path(out, data, p, ratio)
        saved = is_main and checkpoint_saved(path)
        # a later round of this method still to run starts from this round's retrained model
        later = p.schedule.rounds and any(not _done(data, log, out, p, l2, _ratio(pc2), m2)
                                          for l2, pc2, m2 in runs[i + 1:] if l2 == label)
        start = rounds.pop(label, None)
        if _done(data, log, out, p, label, ratio, is_main) and not later:
            if saved:
                logger.info(f"{data.name}: reusing pruned checkpoint {path}")
                result[key] = _load_pruned(data, path)
            continue
        if saved and later:
            logger.info(f"{data.name}: {label} ratio {ratio:.3f} is recorded; retraining its first seed again "
                        "for the next round (records reused)")
        model = _prune_retrain(cfg, data, source, pc, label, ratio, stats.of(pc, start), calib, log, progress,
                               skip_first=saved and not later, start=start)
        if later:
            rounds[label] = (copy.deepcopy(model) if is_main and not saved else model,
                             model.analogformer_masks)
        if is_main:  # more seeds, or the first seed again for the next round: a saved model stands
            result[key] = _load_pruned(data, path) if saved else _save_pruned(cfg, data, source, model, pc, path,
                                                                        tok, out, calib, ratio)
    return result


class SourceStats:
    """Calibration statistics of the pruned models' starting points, for each criterion."""

    def __init__(self, source: nn.Module, calib):
        self.source, self.calib = source, calib
        self.cache: Dict[str, object] = {}

    def of(self, pc, start=None):
        """The statistics `pc`'s criterion needs (None if none): of the dense source, computed
        once per criterion (they depend on the source model only), or of `start`'s model (a
        later round is scored on the model it starts from)."""
        if not pc.needs_calibration:
            return None
        if start is not None:
            return calibrate(start[0], self.calib, pc)
        if pc.criterion not in self.cache:
            self.cache[pc.criterion] = calibrate(self.source, self.calib, pc)
        return self.cache[pc.criterion]


def _save_pruned(cfg, data, source: nn.Module, model: nn.Module, pc, path: Path, tok, out: Path, calib,
                 ratio: float) -> nn.Module:
    """Compact and save the main method's retrained model, with its tile comparison (and the
    MAC pictures); returns it loaded back from `path`."""
    p = cfg.pruning
    masks = model.analogformer_masks
    del model.analogformer_masks
    if p.compact:
        compact(model, masks)
    save_checkpoint(model, tok, path)
    _tile_comparison(cfg, source, model, out, data.name if not p.ratios else f"{data.name}@{ratio_tag(ratio)}")
    if pc.criterion == "mac" and not (out / f"mac_delta_{data.name}.png").exists():
        _mac_pictures(copy.deepcopy(source), calib, pc, out, data.name)
    return _load_pruned(data, path)


def _ratio(pc) -> float:
    """The ratio a method is recorded under (the largest block ratio with `block_ratios`)."""
    return pc.ratio if not pc.block_ratios else max(pc.block_ratios.values())


def _pruned_path(out: Path, data, p, ratio: float) -> Path:
    """Where the main method's compacted model at `ratio` is saved."""
    return out / "checkpoints" / data.name / pruned_model_key(ratio if p.ratios else None)


def _done(data, log: RecordLog, out: Path, p, label: str, ratio: float, is_main: bool) -> bool:
    """Whether a (method, ratio) run has nothing left to do: every retraining seed recorded
    and, for the main method, its pruned model saved."""
    return ((not is_main or checkpoint_saved(_pruned_path(out, data, p, ratio)))
            and all(_retrained_recorded(data, log, label, ratio, k) for k in range(p.seeds_at(ratio))))


@dataclass
class StudyPruneJob:
    """One method at one ratio: what `pruning.Schedule.prune` gets from the study (the
    `pruning.schedule.PruneJob` protocol)."""

    cfg: Any
    data: Any
    source: nn.Module
    """The dense model: teacher and least-squares target (never modified)."""
    pc: Any
    label: str
    ratio: float
    stats: Any
    """Calibration statistics of `model` for the criterion (None if it needs none)."""
    calib: list
    log: RecordLog
    progress: bool
    model: nn.Module
    """The copy pruned and retrained (of `source`, or of the previous round's model)."""
    previous: Any
    """The previous round's masks (progressive), or None."""
    fcfg: Any
    """The retraining recipe."""
    teacher: Optional[nn.Module]
    loader: Any
    """The retraining batches of the first seed."""
    dense: float = 0.0
    """The dense model's headline."""

    @property
    def name(self) -> str:
        return f"{self.data.name}: {self.label} ratio {self.ratio:.3f}"

    def record(self, stage: str, model: nn.Module, **extra) -> float:
        """Write the "prune-<label>:<stage>" record of `model` (`repeat` in `extra`)."""
        return _record(self.data, self.log, f"prune-{self.label}:{stage}", stage, model, self.ratio, self.label,
                       **extra)

    def record_pruned(self, model: nn.Module) -> float:
        return self.record("pruned", model)

    def stats_of(self, model: nn.Module):
        return calibrate(model, self.calib, self.pc)

    def total_steps(self) -> int:
        return total_steps(self.fcfg, self.loader)

    def train_phase(self, after_step, extra_loss) -> None:
        # selection and weight averaging belong to the retraining after the hard pruning
        phase = replace(self.fcfg, eval_every=None, keep_best=False, ema_decay=None)
        finetune(self.model, self.data.train_loader(self.fcfg.batch_size, self.fcfg.seed + 11), phase,
                 after_step=after_step, extra_loss=extra_loss, progress=self.progress, teacher=self.teacher,
                 special_ids=self.data.special_ids)


def _prune_retrain(cfg, data, source: nn.Module, pc, label: str, ratio: float, stats, calib,
                   log: RecordLog, progress: bool, skip_first: bool = False, start=None) -> nn.Module:
    """Prune a copy of `source` with `pc` as `pruning.schedule` says, retrain with the masks
    held; records at each stage. Returns the retrained model (its `analogformer_masks` set).

    `start` (progressive rounds): (model, masks) of the previous round — pruned from a copy of
    that model instead, its removed units kept (`stats` are then that model's); the teacher
    and the least-squares targets stay the dense `source`. `skip_first`: a recorded first
    seed is not retrained (the caller has its model saved).
    """
    fcfg = cfg.finetune_for(data.name, cfg.pruning.retrain)
    job = StudyPruneJob(cfg, data, source, pc, label, ratio, stats, calib, log, progress,
                   model=copy.deepcopy(source if start is None else start[0]).eval(),
                   previous=None if start is None else start[1], fcfg=fcfg,
                   teacher=source if fcfg.needs_teacher else None,  # the dense model distils into the pruned one
                   loader=None)
    job.dense = _record(data, log, "prune:dense", "dense", source, 0.0, cfg.pruning.source)
    job.loader = data.train_loader(fcfg.batch_size, fcfg.seed + 13)
    after_prune, held = cfg.pruning.schedule.prune(job)
    logger.info(f"{data.name}: pruned {label} ratio {ratio:.3f} on {list(pc.blocks)}: "
                + ("" if start is None else "from the previous round's retrained model, ")
                + f"{_pct(job.dense)} -> {_pct(after_prune)}")
    if pc.scope == "global" and pc.structure in ("rows", "columns") and held.fixed:
        logger.info(f"{job.name}: {pc.structure} kept per matrix: "
                    + "; ".join(f"{b} {v}" for b, v in kept_units(job.model, pc, held.masks).items()))
    if pc.reconstruct:
        _refit(job, held.masks)
    job.model.analogformer_masks = _retrain(job, held, skip_first)
    return job.model


def _refit(job: StudyPruneJob, masks) -> None:
    """Least-squares refit of the kept rows toward the dense model, and its record."""
    errs = reconstruct(job.model, job.source, masks, job.calib, job.pc.reconstruct_damping)
    mean = lambda k: sum(e[k] for e in errs.values()) / len(errs)  # noqa: E731
    refit = job.record("reconstructed", job.model,
                       output_error={n: [e["masked"], e["reconstructed"]] for n, e in errs.items()})
    logger.info(f"{job.name}: least-squares refit of {len(errs)} matrices "
                f"(relative output error {mean('masked'):.4f} -> {mean('reconstructed'):.4f}): "
                f"{_pct(refit)}")


def _retrain(job: StudyPruneJob, held, skip_first: bool):
    """Retrain `job.model` (and copies of it, one per further seed) with the masks `held`;
    records per seed. Returns the final masks. With `eval_every` / `keep_best` in the recipe,
    only states at the final ratio are candidates."""
    data, fcfg, label, ratio = job.data, job.fcfg, job.label, job.ratio
    seeds = job.cfg.pruning.seeds_at(ratio)
    logger.info(f"{job.name}: {held.during}retraining {fcfg.budget()}"
                + (f", {seeds} seeds" if seeds > 1 else ""))
    start = copy.deepcopy(job.model) if seeds > 1 else None  # the state every seed starts from
    score = None
    if fcfg.eval_every:
        score = lambda m: data.dev_headline(m) if held.final else None  # noqa: E731
    scores, masks = [], held.masks
    for k in range(seeds):
        # resumed: a recorded seed is not retrained again — except the first, whose model
        # goes on, unless the caller has it saved already (`skip_first`)
        if (k or skip_first) and _retrained_recorded(data, job.log, label, ratio, k):
            scores.append(job.record("retrained", job.model, repeat=k))
            continue
        m = job.model if k == 0 else copy.deepcopy(start)
        fk = replace(fcfg, seed=fcfg.seed + k)
        held.hold(m)
        hist = finetune(m, job.loader if k == 0 else data.train_loader(fk.batch_size, fk.seed + 13), fk,
                        after_step=held.after_step, progress=job.progress, teacher=job.teacher, score=score,
                        special_ids=data.special_ids, higher_is_better=data.higher_is_better)
        masks = held.release()
        tag = f" (seed {fk.seed})" if seeds > 1 else ""
        log_evals(data.name, f"{label} ratio {ratio:.3f} retraining{tag}", hist)
        scores.append(job.record("retrained", m, repeat=k, **_selection(hist, fk)))
        logger.info(f"{job.name} after retraining{tag} {_pct(scores[-1])}")
        if k:
            del m  # only the first seed's model goes on
    defined = [v for v in scores if v is not None]  # a resumed record's headline may be null
    if len(defined) > 1:
        logger.info(f"{job.name} after retraining, {len(scores)} seeds: "
                    f"{100 * statistics.mean(defined):.2f} (sd {100 * statistics.stdev(defined):.2f}; "
                    f"{', '.join(_pct(v) for v in scores)})")
    return masks


def _control(cfg, data, source: nn.Module, log: RecordLog, progress: bool) -> None:
    """The dense model retrained with the pruning recipe (no masks): method "none", ratio 0."""
    if _retrained_recorded(data, log, "none", 0.0, 0):
        return
    fcfg = cfg.finetune_for(data.name, cfg.pruning.retrain)
    model = copy.deepcopy(source).eval()
    logger.info(f"{data.name}: control: the dense model retrained with the pruning recipe")
    hist = finetune(model, data.train_loader(fcfg.batch_size, fcfg.seed + 13), fcfg, progress=progress,
                    teacher=source if fcfg.needs_teacher else None, special_ids=data.special_ids,
                    score=(lambda m: data.dev_headline(m)) if fcfg.eval_every else None,
                    higher_is_better=data.higher_is_better)
    log_evals(data.name, "control retraining", hist)
    value = _record(data, log, "prune-none:retrained", "retrained", model, 0.0, "none", **_selection(hist, fcfg))
    logger.info(f"{data.name}: control (dense, retrained) {_pct(value)}")


def _selection(hist, fcfg) -> dict:
    """Record fields of how a retrained state was chosen: the dev evaluations (with
    eval_every) and the weight average's decay (with ema_decay)."""
    out = {} if fcfg.ema_decay is None else {"ema_decay": fcfg.ema_decay}
    if hist.evals:
        out.update(dev_evals=[[s, v] for s, v in hist.evals], best_step=hist.best_step)
    return out


def _retrained_recorded(data, log: RecordLog, label: str, ratio: float, seed: int) -> bool:
    """Whether the retrained record of method `label` at `ratio` for retraining seed number
    `seed` is in the log (keyed by the first eval split, as `_record` writes it)."""
    return log.has((data.dev_key, f"prune-{label}:retrained", None, seed, ratio))


def _record(data, log: RecordLog, condition: str, stage: str, model: nn.Module, ratio: float,
            method: str, repeat: int = 0, **extra) -> float:
    """Write the digital dev record of one pruning stage (once per `repeat`: the retraining
    seed); returns its headline."""
    eval_key = data.dev_key
    key = (eval_key, condition, None, repeat, ratio)
    if log.has(key):
        return next(r["headline"] for r in log.records if r["task"] == eval_key and r["condition"] == condition
                    and r.get("prune_ratio") == ratio and r.get("repeat", 0) == repeat)
    metrics = data.evaluate(model, eval_key)
    log.write({"task": eval_key, "condition": condition, "t_seconds": None, "repeat": repeat,
               "metrics": metrics, "headline": data.headline(eval_key, metrics),
               "prune_ratio": ratio, "stage": stage, "method": method, **extra})
    return data.headline(eval_key, metrics)


def _tile_comparison(cfg, dense: nn.Module, pruned: nn.Module, out: Path, tag: str) -> None:
    before = map_model(dense, MappingConfig.from_tile_config(cfg.analog.tile))
    after = map_model(pruned, MappingConfig.from_tile_config(cfg.analog.tile, live_only=True))
    (out / f"pruning_tiles_{tag}.md").write_text(comparison_markdown(compare(before, after)))
    plot_tile_layout(before, str(out / f"pruning_tiles_{tag}.png"), after=after)
    _write_artifact(out, f"{tag}: tiles before / after pruning", f"pruning_tiles_{tag}.png")


def _write_artifact(out: Path, title: str, filename: str) -> None:
    path = out / "artifacts.json"
    arts = json.loads(path.read_text()) if path.exists() else {}
    arts[title] = filename
    path.write_text(json.dumps(arts, indent=1))


def _mac_pictures(model: nn.Module, calib, pc, out: Path, task: str) -> None:
    """Seed 000 Fig. 3.1 (sorted product elements) and Fig. 3.2 (Δ heatmap) for one FC2."""
    targets = find_targets(model, pc.blocks, pc.exclude)
    if not targets:
        return
    name = sorted(targets)[0]
    stats = calibrate(model, calib[:2], [name], keep_delta=[name])
    w = linear_weight(dict(model.named_modules())[name]).detach()
    frames = capture_frames(model, calib[:2], name, max_frames=256)
    plot_product_curves(w, frames, 0, str(out / f"mac_products_{task}.png"))
    plot_delta_heatmap(stats[name].delta, str(out / f"mac_delta_{task}.png"))
    _write_artifact(out, f"{task}: MAC product elements of output 0 of {name} (seed 000 Fig. 3.1)",
                    f"mac_products_{task}.png")
    _write_artifact(out, f"{task}: Δ contribution matrix of {name} (seed 000 Fig. 3.2)", f"mac_delta_{task}.png")
