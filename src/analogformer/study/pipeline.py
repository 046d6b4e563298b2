"""The pipeline a study YAML describes.

Per task (a registered task, `tasks.registry`): load its model and data (encoded once,
`study.data.TaskData`) → fine-tune digitally (or reuse the checkpoint) → optionally HWA
fine-tune (both in `finetune_step`, best of `best_of` seeds) and prune + retrain
(`prune_step`; checkpoints reused) → evaluate every condition over time with repeats
(`sweep`; records appended as produced, `records`) → report. Re-running the same command
on the same output folder continues where it stopped.
"""
from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from ..config import to_dict
from ..hardware.energy import attention_energy_table, render_markdown
from ..hardware.mapping import MappingConfig, map_model
from ..logs import get_logger
from ..nn.attention import AttentionQuantConfig, calibrate_attention, quantize_attention
from ..report import build_report
from ..report.figures import plot_tile_layout
from ..tasks.registry import find_task
from .config import StudyConfig
from .data import TaskData
from .finetune_step import digital_model, hwa_model
from .folder import StudyFolder, require_finite
from .generate_step import run_generations
from .prune_step import pruned_model_key, pruned_models, ratio_tag
from .ray_sweep import sweep_runner
from .records import RecordLog
from .sweep import CONDITIONS, Condition, run_time_sweep

logger = get_logger(__name__)


def check_output_dir(out: Path, cfg: StudyConfig) -> None:
    """Write config.yaml, or refuse to mix results of a different config into `out`."""
    with StudyFolder(out) as folder:
        folder.write_config(cfg)


def _attention_prepare(cfg: StudyConfig, calib: List[dict]):
    def prepare(model: nn.Module, cond: Condition) -> None:
        if cond.attention_bits is None:
            return
        acfg = copy.deepcopy(cfg.attention)
        acfg = AttentionQuantConfig(**{**to_dict(acfg), "bits": cond.attention_bits})
        quantize_attention(model, acfg)
        calibrate_attention(model, calib)
    return prepare


def environment() -> dict:
    import transformers  # here, not at import: a config error is reported before this heavy import
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}


def write_hardware_summaries(cfg: StudyConfig, model: nn.Module, out: Path) -> None:
    """tiles.md/.png (tile mapping of the model) and energy.md (attention MAC energy)."""
    tm = map_model(model, MappingConfig.from_tile_config(cfg.analog.tile))
    (out / "tiles.md").write_text(tm.block_markdown() + "\nPer matrix: `tiles.csv`.\n")
    tm.to_csv(str(out / "tiles.csv"))
    plot_tile_layout(tm, str(out / "tiles.png"))
    seq = sorted({cfg.data.max_length, 512})
    (out / "energy.md").write_text(render_markdown(attention_energy_table(model.config, seq_lens=seq)))


def study_conditions(cfg: StudyConfig) -> List[Condition]:
    """The study's conditions; with `pruning.ratios`, each "pruned*" condition becomes one
    per ratio ("pruned@0.333" on the model pruned at ratio 0.333), and each "*weight-noise"
    one per `sweep.weight_noise_levels` ("weight-noise@0.035")."""
    out = []
    for name in cfg.conditions:
        c = CONDITIONS[name]
        if c.model == "pruned" and cfg.pruning is not None and cfg.pruning.ratios:
            out += [replace(c, name=f"{c.name}@{ratio_tag(r)}", model=pruned_model_key(r))
                    for r in cfg.pruning.ratios]
        elif c.weight_noise is not None:  # one condition per weight-noise level
            out += [replace(c, name=f"{c.name}@{level:g}", weight_noise=level) for level in cfg.sweep.weight_noise_levels]
        else:
            out.append(c)
    return out


def run_study(cfg: StudyConfig, out_dir: Optional[str] = None, progress: bool = True) -> Path:
    """Run (or continue) the study; returns the path of report.md. The folder is locked for
    the run (`folder.StudyFolder`: one process at a time); the sweep runs here or on the Ray
    cluster of `cfg.execution` (joined before the fine-tuning: a wrong address fails first)."""
    with StudyFolder(Path(out_dir or cfg.output_dir)) as folder, sweep_runner(cfg.execution) as runner:
        return _run(cfg, folder, progress, runner)


def _evaluator(data: TaskData, key: str):
    """`data.evaluate(model, key)`, holding only the task and that evaluation set (a Ray sweep
    ships it to its workers)."""
    task, batches = data.task, data.evals[key]
    return lambda model: task.evaluate(model, batches, key)


def _run(cfg: StudyConfig, folder: StudyFolder, progress: bool, runner=None) -> Path:
    out = folder.out
    records = RecordLog(out / "results.jsonl")
    folder.write_config(cfg)
    t0 = time.time()
    if records.records:
        logger.info(f"resuming: {len(records.records)} records already in {out / 'results.jsonl'}")
    conditions = study_conditions(cfg)
    needed = {c.model for c in conditions}
    for i, task in enumerate(cfg.tasks):
        model_src = cfg.model or find_task(task).task.default_model()
        base, tok = find_task(task).task.load_model(model_src, seed=cfg.seed)
        require_finite(base, f"the model {model_src}", "fix or re-download it")
        data = TaskData(cfg, task, tok)
        if i == 0 and not (out / "tiles.md").exists():
            write_hardware_summaries(cfg, base, out)
        models = {"digital": digital_model(cfg, data, base, tok, out, progress)}
        ranges: Dict[str, Dict[str, float]] = {}
        if "hwa" in needed:
            models["hwa"], ranges["hwa"] = hwa_model(cfg, data, base, models["digital"], tok, out, progress)
        if cfg.pruning is not None:
            models.update(pruned_models(cfg, data, models, tok, out, progress, records))
        for key in data.evals:
            logger.info(f"{key}: evaluating {len(conditions)} condition(s) × {len(cfg.sweep.times_seconds)} "
                 f"time(s) × {cfg.sweep.repeats} repeat(s)")
            run_time_sweep(models, key, conditions,
                           evaluate=_evaluator(data, key),
                           headline=lambda met, k=key: data.headline(k, met),
                           analog_cfg=cfg.analog, cfg=cfg.sweep, log=records,
                           calib_batches=data.calib, progress=progress,
                           prepare=_attention_prepare(cfg, data.calib), input_ranges=ranges,
                           runner=runner)
            if cfg.generation is not None and data.task.generates:
                run_generations(cfg.generation, key, models, tok, conditions, cfg.analog, cfg.sweep, data.calib,
                                out, prepare=_attention_prepare(cfg, data.calib), input_ranges=ranges)
    env = environment()
    env["wall_seconds_this_run"] = round(time.time() - t0, 1)
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    report = build_report(out)
    logger.info(f"done in {time.time() - t0:.0f} s: {report}")
    return report
