"""The prune → retrain → compact step of a study (seed 000 ch. 3, seed 003 baselines).

Writes records of the digital headline metric at three stages — `dense` (before),
`pruned` (masks applied, no retraining) and `retrained` — with `prune_ratio` and `stage`
keys (condition "prune:<stage>"), a tile map before/after pruning (tiles freed per
block), and the Fig. 3.1 / 3.2 pictures of the MAC analysis for the first FC2 layer.
The compacted, retrained model is saved as a checkpoint and evaluated on tiles by the
"pruned" conditions of the sweep.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Dict

from torch import nn

from .finetune import evaluate, finetune, save_checkpoint
from .sweep import RecordLog


def _log(msg: str) -> None:
    print(f"[analogformer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _load_pruned(path: Path) -> nn.Module:
    from .pruning import load_compacted
    return load_compacted(str(path)).eval()


def pruned_model(cfg, data, models: Dict[str, nn.Module], tok, out: Path, progress: bool,
                 log: RecordLog) -> nn.Module:
    """Prune `models[cfg.pruning.source]`, retrain with masks held, compact; cached on disk."""
    from .mapping import MappingConfig, compare, comparison_markdown, map_model, plot_tile_layout
    from .pruning import ADMMPruner, calibrate, compact, prune
    from .tasks.metrics import headline_value

    p = cfg.pruning
    pc = p.prune
    path = out / "checkpoints" / data.task / "pruned"
    if (path / "model.safetensors").exists():
        _log(f"{data.task}: reusing pruned checkpoint {path}")
        return _load_pruned(path)
    eval_key, eval_batches = next(iter(data.evals.items()))
    ratio = pc.ratio if not pc.block_ratios else max(pc.block_ratios.values())

    def record(stage: str, model: nn.Module) -> float:
        key = (eval_key, f"prune:{stage}", None, 0)
        metrics = evaluate(model, eval_batches, eval_key)
        if not log.has(key):
            log.write({"task": eval_key, "condition": f"prune:{stage}", "t_seconds": None, "repeat": 0,
                       "metrics": metrics, "headline": headline_value(eval_key, metrics),
                       "prune_ratio": 0.0 if stage == "dense" else ratio, "stage": stage})
        return headline_value(eval_key, metrics)

    model = copy.deepcopy(models[p.source]).eval()
    mcfg = MappingConfig.from_tile_config(cfg.analog.tile)
    before = map_model(model, mcfg)
    dense = record("dense", model)
    calib = []
    for b in data.train_loader(cfg.finetune_for(data.task).batch_size, cfg.seed + 3):
        calib.append({k: v for k, v in b.items() if k != "labels"})
        if len(calib) >= p.calibration_batches:
            break
    stats = calibrate(model, calib, pc) if pc.criterion in ("mac", "activation") else None
    fcfg = cfg.finetune_for(data.task, p.retrain)
    if pc.admm_rho is not None:
        _log(f"{data.task}: ADMM phase (rho {pc.admm_rho:g})")
        admm = ADMMPruner(model, pc, stats)
        finetune(model, data.train_loader(fcfg.batch_size, fcfg.seed + 11), fcfg,
                 after_step=admm.step, extra_loss=admm.penalty, progress=progress)
        masks = admm.finalize(model)
    else:
        masks = prune(model, pc, stats)
    after_prune = record("pruned", model)
    _log(f"{data.task}: pruned {pc.criterion}/{pc.structure} ratio {ratio:.3f} on {list(pc.blocks)}: "
         f"{100 * dense:.2f} -> {100 * after_prune:.2f}; retraining {fcfg.epochs} epoch(s)")
    masks.register_gradient_hooks(model)
    finetune(model, data.train_loader(fcfg.batch_size, fcfg.seed + 13), fcfg,
             after_step=masks.after_step, progress=progress)
    masks.remove_hooks()
    retrained = record("retrained", model)
    _log(f"{data.task}: after retraining {100 * retrained:.2f}")
    if p.compact:
        compact(model, masks)
    save_checkpoint(model, tok, path)
    after = map_model(model, MappingConfig.from_tile_config(cfg.analog.tile, live_only=True))
    rows = compare(before, after)
    (out / f"pruning_tiles_{data.task}.md").write_text(comparison_markdown(rows))
    plot_tile_layout(before, str(out / f"pruning_tiles_{data.task}.png"), after=after)
    _write_artifact(out, f"{data.task}: tiles before / after pruning", f"pruning_tiles_{data.task}.png")
    if pc.criterion == "mac":
        _mac_pictures(copy.deepcopy(models[p.source]), calib, pc, out, data.task)
    return _load_pruned(path)


def _write_artifact(out: Path, title: str, filename: str) -> None:
    path = out / "artifacts.json"
    arts = json.loads(path.read_text()) if path.exists() else {}
    arts[title] = filename
    path.write_text(json.dumps(arts, indent=1))


def _mac_pictures(model: nn.Module, calib, pc, out: Path, task: str) -> None:
    """Seed 000 Fig. 3.1 (sorted product elements) and Fig. 3.2 (Δ heatmap) for one FC2."""
    from .pruning import calibrate, capture_frames, find_targets, linear_weight
    from .pruning import plot_delta_heatmap, plot_product_curves

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
