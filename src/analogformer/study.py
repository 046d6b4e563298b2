"""The pipeline a study YAML describes.

Per task: load data (tokenized once) → fine-tune digitally (or reuse the checkpoint) →
optionally HWA fine-tune (both in `study_finetune`, best of `best_of` seeds) and prune +
retrain (`study_pruning`; checkpoints reused) → evaluate every
condition over time with repeats (records appended as produced) → report. Re-running the
same command on the same output folder continues where it stopped.
"""
from __future__ import annotations

import copy
import itertools
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from .config import to_dict
from .finetune import unlabelled, default_model_path, evaluate, load_model_and_tokenizer
from .study_config import StudyConfig, dump_study_config
from .study_finetune import digital_model, hwa_model
from .sweep import CONDITIONS, Condition, RecordLog, run_time_sweep
from .tasks import encode_examples, load_glue_examples, make_loader, resolve_task
from .tasks.metrics import headline_value


def _log(msg: str) -> None:
    print(f"[analogformer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# What a resumed study may add to: records are keyed and seeded one by one (task,
# condition, time, repeat), so new tasks / conditions / time points / repeats / retraining
# seeds are computed and everything already recorded stays valid.
_EXTENDABLE = ("tasks", "conditions", "sweep.times_seconds", "sweep.repeats", "pruning.retrain_seeds",
               "pruning.round_seeds")


def _extends(key: str, old, new) -> bool:
    if key not in _EXTENDABLE:
        return False
    if isinstance(old, list) and isinstance(new, list):
        return all(v in new for v in old)
    return type(old) is int and type(new) is int and new >= old


def _config_changes(old, new, prefix: str = "") -> List[str]:
    """Keys whose values differ between two config dicts. Keys the old dict lacks are
    options added by a newer analogformer (at their defaults), and lists that only grow
    (`_EXTENDABLE`): not a change."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new or _extends(prefix, old, new) else [f"{prefix}: {old!r} -> {new!r}"]
    out = []
    for k in new:
        if k in old:
            out += _config_changes(old[k], new[k], f"{prefix}.{k}" if prefix else str(k))
    out += [(f"{prefix}.{k}" if prefix else str(k)) + ": removed" for k in old if k not in new]
    return out


def check_output_dir(out: Path, cfg: StudyConfig) -> None:
    """Write config.yaml, or refuse to mix results of a different config into `out`."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    text = dump_study_config(cfg)
    path = out / "config.yaml"
    if path.exists() and path.read_text() != text:
        changes = _config_changes(yaml.safe_load(path.read_text()) or {}, yaml.safe_load(text))
        if changes:
            raise ValueError(f"{out} holds a study run with a different config (changed: "
                             f"{changes[:5]}); choose another --out folder, or delete the folder "
                             f"to start over (a study may only add to {', '.join(_EXTENDABLE)})")
    path.write_text(text)


class TaskData:
    """Tokenized train/eval data of one task, built once and reused by every step."""

    def __init__(self, cfg: StudyConfig, task: str, tokenizer):
        self.spec, implied = resolve_task(task)
        self.task = self.spec.name
        self.special_ids = list(tokenizer.all_special_ids)  # never replaced by augmentation
        d = cfg.data
        fcfg = cfg.finetune_for(self.task)
        n_train = fcfg.max_train_examples or d.max_train_examples
        train = load_glue_examples(self.task, "train", d.glue_dir, n_train, cfg.seed)
        self.train = encode_examples(train, tokenizer, d.max_length)
        splits = (implied,) if implied else self.spec.eval_splits
        self.evals: Dict[str, List[dict]] = {}
        n_eval = fcfg.max_eval_examples or d.max_eval_examples
        for split in splits:
            key = self.task if len(splits) == 1 else f"{self.task}-{'mm' if 'mismatched' in split else 'm'}"
            ex = load_glue_examples(self.task, split, d.glue_dir, n_eval, cfg.seed)
            enc = encode_examples(ex, tokenizer, d.max_length)
            self.evals[key] = list(make_loader(enc, cfg.sweep.eval_batch_size, shuffle=False))
        self.calib = self.unlabelled_batches(cfg.sweep.calibration_batches, fcfg.batch_size, cfg.seed + 1)

    def train_loader(self, batch_size: int, seed: int):
        return make_loader(self.train, batch_size, shuffle=True, seed=seed)

    def unlabelled_batches(self, n: int, batch_size: int, seed: int) -> List[dict]:
        """The first `n` batches of `train_loader(batch_size, seed)` without labels
        (calibration inputs)."""
        return [unlabelled(b) for b in itertools.islice(self.train_loader(batch_size, seed), n)]


def _attention_prepare(cfg: StudyConfig, calib: List[dict]):
    from .nn.attention import AttentionQuantConfig, calibrate_attention, quantize_attention

    def prepare(model: nn.Module, cond: Condition) -> None:
        if cond.attention_bits is None:
            return
        acfg = copy.deepcopy(cfg.attention)
        acfg = AttentionQuantConfig(**{**to_dict(acfg), "bits": cond.attention_bits})
        quantize_attention(model, acfg)
        calibrate_attention(model, calib)
    return prepare


def environment() -> dict:
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}


def write_hardware_summaries(cfg: StudyConfig, model: nn.Module, out: Path) -> None:
    """tiles.md/.png (tile mapping of the model) and energy.md (attention MAC energy)."""
    from .energy import attention_energy_table, render_markdown
    from .mapping import MappingConfig, map_model, plot_tile_layout

    tm = map_model(model, MappingConfig.from_tile_config(cfg.analog.tile))
    (out / "tiles.md").write_text(tm.block_markdown() + "\nPer matrix: `tiles.csv`.\n")
    tm.to_csv(str(out / "tiles.csv"))
    plot_tile_layout(tm, str(out / "tiles.png"))
    seq = sorted({cfg.data.max_length, 512})
    (out / "energy.md").write_text(render_markdown(attention_energy_table(model.config, seq_lens=seq)))


def study_conditions(cfg: StudyConfig) -> List[Condition]:
    """The study's conditions; with `pruning.ratios`, each "pruned*" condition becomes one
    per ratio ("pruned@0.333" on the model pruned at ratio 0.333)."""
    from .study_pruning import pruned_model_key, ratio_tag

    out = []
    for name in cfg.conditions:
        c = CONDITIONS[name]
        if c.model == "pruned" and cfg.pruning is not None and cfg.pruning.ratios:
            out += [replace(c, name=f"{c.name}@{ratio_tag(r)}", model=pruned_model_key(r))
                    for r in cfg.pruning.ratios]
        else:
            out.append(c)
    return out


def run_study(cfg: StudyConfig, out_dir: Optional[str] = None, progress: bool = True) -> Path:
    """Run (or continue) the study; returns the path of report.md."""
    from .report import build_report

    out = Path(out_dir or cfg.output_dir)
    check_output_dir(out, cfg)
    t0 = time.time()
    model_src = cfg.model or default_model_path()
    log = RecordLog(out / "results.jsonl")
    if log.records:
        _log(f"resuming: {len(log.records)} records already in {out / 'results.jsonl'}")
    conditions = study_conditions(cfg)
    needed = {c.model for c in conditions}
    for i, task in enumerate(cfg.tasks):
        base, tok = load_model_and_tokenizer(model_src, task, seed=cfg.seed)
        data = TaskData(cfg, task, tok)
        if i == 0 and not (out / "tiles.md").exists():
            write_hardware_summaries(cfg, base, out)
        models = {"digital": digital_model(cfg, data, base, tok, out, progress)}
        ranges: Dict[str, Dict[str, float]] = {}
        if "hwa" in needed:
            models["hwa"], ranges["hwa"] = hwa_model(cfg, data, base, models["digital"], tok, out, progress)
        if cfg.pruning is not None:
            from .study_pruning import pruned_models
            models.update(pruned_models(cfg, data, models, tok, out, progress, log))
        for key, batches in data.evals.items():
            _log(f"{key}: evaluating {len(conditions)} condition(s) × {len(cfg.sweep.times_seconds)} "
                 f"time(s) × {cfg.sweep.repeats} repeat(s)")
            run_time_sweep(models, key, conditions,
                           evaluate=lambda m, b=batches, k=key: evaluate(m, b, k),
                           headline=lambda met, k=key: headline_value(k, met),
                           analog_cfg=cfg.analog, cfg=cfg.sweep, log=log,
                           calib_batches=data.calib, progress=progress,
                           prepare=_attention_prepare(cfg, data.calib), input_ranges=ranges)
    env = environment()
    env["wall_seconds_this_run"] = round(time.time() - t0, 1)
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    report = build_report(out)
    _log(f"done in {time.time() - t0:.0f} s: {report}")
    return report
