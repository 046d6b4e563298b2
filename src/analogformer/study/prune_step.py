"""The prune → retrain → compact step of a study (seed 000 ch. 3, seed 003 baselines).

For every method (the main one and the baselines) and every ratio, writes records of the
digital headline metric at three stages — "prune:dense" (before, once), then
"prune-<method>:pruned" (masks applied, no retraining) and "prune-<method>:retrained" —
with `prune_ratio`, `stage` and `method` keys. For the main method it also saves the
compacted, retrained model (evaluated on tiles by the "pruned" conditions of the sweep),
a tile map before/after pruning (tiles freed per block), and the Fig. 3.1 / 3.2 pictures
of the MAC analysis for the first FC2 layer. `pruning.stages` > 1 prunes gradually during
the retraining; `pruning.control` adds the dense model retrained with the same recipe
("prune-none:retrained", ratio 0); `eval_every` / `keep_best` in `pruning.retrain` keep the
retrained state with the best dev score (recorded with `dev_evals` and `best_step`).
"""
from __future__ import annotations

import copy
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Dict

from torch import nn

from ..hardware.mapping import MappingConfig, compare, comparison_markdown, map_model
from ..logs import get_logger
from ..pruning import (ADMMPruner, GradualPruner, calibrate, capture_frames, compact, find_targets, kept_units,
                       linear_weight, load_compacted, prune, reconstruct)
from ..report.figures import plot_delta_heatmap, plot_product_curves, plot_tile_layout
from ..training.finetune import finetune, save_checkpoint, total_steps
from .finetune_step import log_evals
from .records import RecordLog

logger = get_logger(__name__)


def _load_pruned(path: Path) -> nn.Module:
    return load_compacted(str(path)).eval()


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
    stats_cache: Dict[str, object] = {}

    def stats_for(pc):
        """The criterion's statistics of the source model (None if it needs none), computed
        once per criterion: they depend on the source model only."""
        if not pc.needs_calibration:
            return None
        if pc.criterion not in stats_cache:
            stats_cache[pc.criterion] = calibrate(source, calib, pc)
        return stats_cache[pc.criterion]

    result: Dict[str, nn.Module] = {}
    runs = p.runs()
    rounds: Dict[str, tuple] = {}  # progressive: label -> (retrained model, masks) of its last round
    for i, (label, pc, is_main) in enumerate(runs):
        ratio = _ratio(pc)
        key = pruned_model_key(ratio if p.ratios else None)
        path = _pruned_path(out, data, p, ratio)
        saved = is_main and (path / "model.safetensors").exists()
        # a later round of this method still to run starts from this round's retrained model
        later = p.progressive and any(not _done(data, log, out, p, l2, _ratio(pc2), m2)
                                      for l2, pc2, m2 in runs[i + 1:] if l2 == label)
        start = rounds.pop(label, None)
        if _done(data, log, out, p, label, ratio, is_main) and not later:
            if saved:
                logger.info(f"{data.name}: reusing pruned checkpoint {path}")
                result[key] = _load_pruned(path)
            continue
        if saved and later:
            logger.info(f"{data.name}: {label} ratio {ratio:.3f} is recorded; retraining its first seed again "
                 "for the next round (records reused)")
        # a later round is scored on the model it starts from, the first on the dense one
        stats = stats_for(pc) if start is None or not pc.needs_calibration else calibrate(start[0], calib, pc)
        model = _prune_retrain(cfg, data, source, pc, label, ratio, stats, calib, log, progress,
                               skip_first=saved and not later, start=start)
        if later:
            rounds[label] = (copy.deepcopy(model) if is_main and not saved else model,
                             model.analogformer_masks)
        if not is_main:
            continue
        if saved:  # more seeds, or the first seed again for the next round: the saved model stands
            result[key] = _load_pruned(path)
            continue
        masks = model.analogformer_masks
        del model.analogformer_masks
        if p.compact:
            compact(model, masks)
        save_checkpoint(model, tok, path)
        _tile_comparison(cfg, source, model, out, data.name if not p.ratios else f"{data.name}@{ratio_tag(ratio)}")
        if pc.criterion == "mac" and not (out / f"mac_delta_{data.name}.png").exists():
            _mac_pictures(copy.deepcopy(source), calib, pc, out, data.name)
        result[key] = _load_pruned(path)
    return result


def _ratio(pc) -> float:
    """The ratio a method is recorded under (the largest block ratio with `block_ratios`)."""
    return pc.ratio if not pc.block_ratios else max(pc.block_ratios.values())


def _pruned_path(out: Path, data, p, ratio: float) -> Path:
    """Where the main method's compacted model at `ratio` is saved."""
    return out / "checkpoints" / data.name / pruned_model_key(ratio if p.ratios else None)


def _done(data, log: RecordLog, out: Path, p, label: str, ratio: float, is_main: bool) -> bool:
    """Whether a (method, ratio) run has nothing left to do: every retraining seed recorded
    and, for the main method, its pruned model saved."""
    return ((not is_main or (_pruned_path(out, data, p, ratio) / "model.safetensors").exists())
            and all(_retrained_recorded(data, log, label, ratio, k) for k in range(p.seeds_at(ratio))))


def _prune_retrain(cfg, data, source: nn.Module, pc, label: str, ratio: float, stats, calib,
                   log: RecordLog, progress: bool, skip_first: bool = False, start=None) -> nn.Module:
    """Prune a copy of `source` with `pc`, retrain with the masks held; records at each stage.

    `start` (progressive rounds): (model, masks) of the previous round — pruned from a copy of
    that model instead, its removed units kept (`stats` are then that model's); the teacher
    and the least-squares targets stay the dense `source`.

    One-shot (`pruning.stages: 1`): prune, then retrain. Gradual (`stages` > 1): the
    "after pruning" record is still the one-shot pruned model (no retraining), and the
    retraining prunes in stages (`GradualPruner`). With `eval_every` / `keep_best` in the
    retraining recipe, only states at the final ratio are candidates.
    """
    p = cfg.pruning
    model = copy.deepcopy(source if start is None else start[0]).eval()
    dense = _record(data, log, "prune:dense", "dense", source, 0.0, p.source)
    fcfg = cfg.finetune_for(data.name, p.retrain)
    teacher = source if fcfg.needs_teacher else None  # the dense model distils into the pruned one
    loader = data.train_loader(fcfg.batch_size, fcfg.seed + 13)
    pruner = None
    if pc.admm_rho is not None:
        logger.info(f"{data.name}: {label} ratio {ratio:.3f}: ADMM phase (rho {pc.admm_rho:g})")
        admm = ADMMPruner(model, pc, stats)
        # selection and weight averaging belong to the retraining after the hard pruning
        phase = replace(fcfg, eval_every=None, keep_best=False, ema_decay=None)
        finetune(model, data.train_loader(fcfg.batch_size, fcfg.seed + 11), phase,
                 after_step=admm.step, extra_loss=admm.penalty, progress=progress, teacher=teacher,
                 special_ids=data.special_ids)
        masks = admm.finalize(model)
        after_prune = _record(data, log, f"prune-{label}:pruned", "pruned", model, ratio, label)
    elif p.stages > 1:
        oneshot = copy.deepcopy(source).eval()
        prune(oneshot, pc, stats)
        after_prune = _record(data, log, f"prune-{label}:pruned", "pruned", oneshot, ratio, label)
        del oneshot
        stats_fn = (lambda m: calibrate(m, calib, pc)) if pc.needs_calibration else (lambda m: None)
        pruner = GradualPruner(model, pc, p.stages, total_steps(fcfg, loader), stats_fn)
        masks = pruner.masks
    else:
        masks = prune(model, pc, stats, previous=None if start is None else start[1])
        after_prune = _record(data, log, f"prune-{label}:pruned", "pruned", model, ratio, label)
    how = f"in {p.stages} stages during " if pruner else ""
    logger.info(f"{data.name}: pruned {label} ratio {ratio:.3f} on {list(pc.blocks)}: "
         + ("" if start is None else "from the previous round's retrained model, ")
         + f"{100 * dense:.2f} -> {100 * after_prune:.2f}")
    if pc.scope == "global" and pc.structure in ("rows", "columns") and not pruner:
        logger.info(f"{data.name}: {label} ratio {ratio:.3f}: {pc.structure} kept per matrix: "
             + "; ".join(f"{b} {v}" for b, v in kept_units(model, pc, masks).items()))
    if pc.reconstruct:
        errs = reconstruct(model, source, masks, calib, pc.reconstruct_damping)
        mean = lambda k: sum(e[k] for e in errs.values()) / len(errs)  # noqa: E731
        refit = _record(data, log, f"prune-{label}:reconstructed", "reconstructed", model, ratio, label,
                        output_error={n: [e["masked"], e["reconstructed"]] for n, e in errs.items()})
        logger.info(f"{data.name}: {label} ratio {ratio:.3f}: least-squares refit of {len(errs)} matrices "
             f"(relative output error {mean('masked'):.4f} -> {mean('reconstructed'):.4f}): "
             f"{100 * refit:.2f}")
    seeds = p.seeds_at(ratio)
    logger.info(f"{data.name}: {label} ratio {ratio:.3f}: {how}retraining {fcfg.epochs} epoch(s)"
         + (f", {seeds} seeds" if seeds > 1 else ""))
    start = copy.deepcopy(model) if seeds > 1 else None  # the state every seed starts from
    score = None
    if fcfg.eval_every:
        score = lambda m: data.dev_headline(m) if pruner is None or pruner.final else None  # noqa: E731
    scores = []
    for k in range(seeds):
        name = f"prune-{label}:retrained"
        # resumed: a recorded seed is not retrained again — except the first, whose model
        # goes on, unless the caller has it saved already (`skip_first`)
        if (k or skip_first) and _retrained_recorded(data, log, label, ratio, k):
            scores.append(_record(data, log, name, "retrained", model, ratio, label, repeat=k))
            continue
        m = model if k == 0 else copy.deepcopy(start)
        fk = replace(fcfg, seed=fcfg.seed + k)
        if pruner is None:
            masks.register_gradient_hooks(m)
        hist = finetune(m, loader if k == 0 else data.train_loader(fk.batch_size, fk.seed + 13), fk,
                        after_step=pruner.after_step if pruner else masks.after_step,
                        progress=progress, teacher=teacher, score=score, special_ids=data.special_ids,
                        higher_is_better=data.higher_is_better)
        if pruner is not None:
            masks = pruner.masks
        masks.remove_hooks()
        tag = f" (seed {fk.seed})" if seeds > 1 else ""
        log_evals(data.name, f"{label} ratio {ratio:.3f} retraining{tag}", hist)
        scores.append(_record(data, log, name, "retrained", m, ratio, label, repeat=k,
                              **_selection(hist, fk)))
        logger.info(f"{data.name}: {label} ratio {ratio:.3f} after retraining{tag} {100 * scores[-1]:.2f}")
        if k:
            del m  # only the first seed's model goes on
    if len(scores) > 1:
        logger.info(f"{data.name}: {label} ratio {ratio:.3f} after retraining, {len(scores)} seeds: "
             f"{100 * statistics.mean(scores):.2f} (sd {100 * statistics.stdev(scores):.2f}; "
             f"{', '.join(f'{100 * v:.2f}' for v in scores)})")
    model.analogformer_masks = masks
    return model


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
    logger.info(f"{data.name}: control (dense, retrained) {100 * value:.2f}")


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
