"""`analogformer sensitivity TARGET`: TARGET as for `analogformer diagnose` (a study YAML, or a
saved model folder fine-tuned for --task); settings from the YAML's `sensitivity:` section,
overridden by the command's options. The output folder holds `sensitivity.json` (what is
measured: a re-run on the same folder must measure the same model with the same noise, and
then resumes from `sensitivity.jsonl`), `sensitivity.md`, `sensitivity.png` (heat-map),
`mixed_mapping.png` and `weights.json` (per-layer weight statistics)."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

from ..diagnose.report import config_summary
from ..diagnose.target import Target, load_target, measurement_folder, output_and_setup
from ..logs import get_logger
from ..report.format import time_label
from ..study.data import TaskData
from ..tasks.registry import describe
from .config import SensitivityConfig
from .report import write_report
from .run import mixed_mapping, sensitivity

logger = get_logger(__name__)


def run_sensitivity(target: Target, scfg: SensitivityConfig, out: Path, progress: bool = True, setup: str = "") -> str:
    """Measure `target` as `scfg` says into `out` (resuming its records); returns the report text."""
    cfg, out = target.cfg, Path(out)
    logger.info(f"sensitivity of {target.origin}")
    if not target.fine_tuned:
        logger.warning(f"warning: {target.origin}")
    data = TaskData(cfg, target.task, target.tokenizer)
    key = data.dev_key
    info = describe(key)
    with measurement_folder(out, "sensitivity", {**target.identity(), "std": scfg.std},
                            "sensitivity of another model, config or noise std") as log:
        common = dict(t_seconds=scfg.t_seconds, repeats=scfg.repeats, seed=cfg.sweep.seed, calib_batches=data.calib,
                      headline=lambda met: data.headline(key, met), task=key,
                      calibration_percentile=cfg.sweep.calibration_percentile, progress=progress)
        evaluate = lambda m: data.evaluate(m, key)  # noqa: E731
        s = sensitivity(target.model, cfg.analog, evaluate, log, modes=scfg.modes, std=scfg.std,
                        digital_layers=scfg.digital_layers, select=scfg.layers,
                        higher_is_better=data.higher_is_better, **common)
        mixed = []
        if scfg.mixed_k:
            mixed = mixed_mapping(target.model, cfg.analog, evaluate, log, s.ranking(scfg.ranking_mode, ("analog",)),
                                  scfg.mixed_k, **common)
            s.records = [r for r in log.records if r["task"] == key]
        (out / "weights.json").write_text(json.dumps(s.weights, indent=1))
        n_eval = sum(len(next(iter(b.values()))) for b in data.evals[key])
        metric = info.metric_names.get(info.headline_metric, info.headline_metric)
        notes = [f"Model: {target.origin}.", f"Task: {info.display_name} ({key}), {n_eval} evaluation examples"
                 + (f" (data.max_eval_examples = {cfg.data.max_eval_examples})" if cfg.data.max_eval_examples else "") + ".",
                 f"Setup: {setup or 'defaults'}; {len(s.layers)} layers, modes {', '.join(scfg.modes)}, std {scfg.std:g}, "
                 f"tiles read at {time_label(scfg.t_seconds)}, {scfg.repeats} instances each, sweep seed {cfg.sweep.seed}.",
                 f"Tiles: {config_summary(cfg.analog)}."]
        text = write_report(s, out, f"Per-layer sensitivity: {info.display_name}", notes, metric, mixed)
    logger.info(f"wrote {out / 'sensitivity.md'}, {out / 'sensitivity.png'}")
    return text


def command(target: str, task: Optional[str] = None, out: Optional[str] = None, config: Optional[str] = None,
            glue_dir: Optional[str] = None, overrides: Sequence = (), progress: bool = True, **options) -> str:
    """The `analogformer sensitivity` command: resolve TARGET, merge the YAML's `sensitivity:`
    section with the given options (None = not given), pick the output folder, run."""
    t = load_target(target, task, config, glue_dir, overrides)
    scfg = t.cfg.sensitivity or SensitivityConfig()
    given = {k: v for k, v in options.items() if v is not None}
    bad = [k for k in given if k not in asdict(scfg)]
    if bad:
        raise ValueError(f"sensitivity: unknown options {bad}; known: {list(asdict(scfg))}")
    scfg = replace(scfg, **given)  # validated again by __post_init__
    out, setup = output_and_setup(t, target, out, config, overrides, "sensitivity")
    return run_sensitivity(t, scfg, out, progress, setup)
