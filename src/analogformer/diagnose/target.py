"""`analogformer diagnose TARGET`: what TARGET names, and the run over one output folder.

TARGET is a study YAML (its model, analog config, data settings and task; the study's
fine-tuned `checkpoints/<task>/digital` when its output folder holds one, else the config's
pre-trained model) or a saved model folder fine-tuned for `--task` (as `analogformer
evaluate` takes). The output folder holds `diagnosis.json` (what is diagnosed: a re-run on
the same folder must diagnose the same thing, and then resumes from `diagnosis.jsonl`),
`diagnosis.md` and `diagnosis.png`.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from torch import nn

from ..config import to_dict
from ..logs import get_logger
from ..study.config import StudyConfig, config_changes, load_study_config
from ..study.data import TaskData
from ..study.folder import StudyFolder, checkpoint_saved, require_finite
from ..study.records import RecordLog
from ..tasks.registry import default_model_path, describe, find_task
from .report import config_summary, render_markdown, write_report
from .effects import EFFECTS
from .run import diagnose

logger = get_logger(__name__)


def parse_times(text: str) -> Tuple[float, ...]:
    """'1,2592000' -> (1.0, 2592000.0): seconds since programming, finite, >= 0, each once."""
    out = []
    for part in str(text).split(","):
        try:
            t = float(part.strip())
        except ValueError:
            raise ValueError(f"--times {text!r}: {part.strip()!r} is not a number of seconds; give comma-separated "
                             "seconds since programming, e.g. --times 1,2592000 (1 s and 30 days)") from None
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"--times {text!r}: {part.strip()} is not a time >= 0 in seconds, e.g. --times 1,2592000")
        if t in out:
            raise ValueError(f"--times {text!r}: {part.strip()} is there twice; name each time point once")
        out.append(t)
    return tuple(out)


@dataclass
class Target:
    """What a diagnosis runs on: the study config (task, data, analog, sweep seed), the model and its description."""

    cfg: StudyConfig
    task: str
    model: nn.Module
    tokenizer: object
    model_path: Path
    fine_tuned: bool
    origin: str

    def identity(self) -> dict:
        """What must not change between runs that share an output folder."""
        weights = sorted(p for p in self.model_path.glob("*.safetensors")) if self.model_path.is_dir() else []
        return {"task": self.task, "model": str(self.model_path.resolve()) if self.model_path.exists()
                else str(self.model_path), "weights": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in weights},
                "analog": to_dict(self.cfg.analog), "data": to_dict(self.cfg.data), "seed": self.cfg.seed,
                "sweep_seed": self.cfg.sweep.seed, "calibration_batches": self.cfg.sweep.calibration_batches,
                "calibration_percentile": self.cfg.sweep.calibration_percentile,
                "calibration_batch_size": self.cfg.finetune_for(self.task).batch_size}


def load_target(target: str, task: Optional[str] = None, config: Optional[str] = None,
                glue_dir: Optional[str] = None, overrides: Sequence = ()) -> Target:
    """Resolve TARGET (study YAML or model folder) into a `Target`; errors say what to pass."""
    path = Path(target)
    if task is not None:
        task = find_task(task).name  # an unknown task: the registry's did-you-mean error
    extra: List = [("data.glue_dir", glue_dir)] if glue_dir else []
    if path.is_file():
        if config is not None:
            raise ValueError("--config is for a model-folder TARGET; a study YAML TARGET is the config already")
        cfg = load_study_config(str(path), ([("tasks", [task])] if task else []) + extra + list(overrides))
        if len(cfg.tasks) > 1:
            raise ValueError(f"{path} has several tasks ({', '.join(map(str, cfg.tasks))}); choose one with --task")
        name = find_task(cfg.tasks[0]).name
        ckpt = Path(cfg.output_dir) / "checkpoints" / name / "digital"
        if checkpoint_saved(ckpt):
            return _load(cfg, name, ckpt, True, f"the study's fine-tuned checkpoint {ckpt}")
        source = Path(cfg.model or default_model_path())
        if not find_task(name).task.digital_finetune:  # e.g. a causal LM: evaluated as pre-trained
            return _load(cfg, name, source, True, f"the config's model {cfg.model or source} (the {name} task "
                                                  "evaluates the pre-trained model; it is not fine-tuned)")
        return _load(cfg, name, source, False,
                     f"the config's model {cfg.model or source} — NOT fine-tuned for {name} (no checkpoint in {ckpt}; "
                     "run `analogformer study` first): its task head is untrained, so the headline is near chance")
    if path.is_dir():
        if task is None:
            raise ValueError(f"{path} is a model folder: name the task it was fine-tuned for with --task")
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a saved model folder (no config.json); pass a study YAML or the folder "
                             "written by save_pretrained / `analogformer study` (checkpoints/TASK/digital)")
        cfg = load_study_config(config, [("model", str(path)), ("tasks", [task])] + extra + list(overrides))
        return _load(cfg, task, path, True, f"the model folder {path} (taken as fine-tuned for {task})")
    raise ValueError(f"{target} is neither a study YAML file nor a saved model folder (it does not exist)")


def _load(cfg: StudyConfig, task: str, path: Path, fine_tuned: bool, origin: str) -> Target:
    model, tok = find_task(task).task.load_model(str(path), seed=cfg.seed)
    require_finite(model, f"the model {path}", "fix or re-make it")
    return Target(cfg, task, model.eval(), tok, Path(path), fine_tuned, origin)


def check_folder(out: Path, name: str, identity: dict, what: str) -> None:
    """Write out/NAME.json, or refuse a folder whose records (out/NAME.jsonl) measure something
    else: `what` says what ("diagnosis of another model or config")."""
    path = out / f"{name}.json"
    if path.is_file():
        changes = config_changes(json.loads(path.read_text()), identity)
        records = out / f"{name}.jsonl"
        if changes and records.is_file() and records.stat().st_size > 0:
            raise ValueError(f"{out} holds the {what} (changed: {changes[:4]}); "
                             "choose another --out folder, or delete it to start over")
    path.write_text(json.dumps(identity, indent=1))


@contextlib.contextmanager
def measurement_folder(out: Path, name: str, identity: dict, what: str) -> Iterator[RecordLog]:
    """Hold `out`'s lock, check it measures `identity` (`check_folder`) and yield its record log
    out/NAME.jsonl, whose records a re-run reuses."""
    with StudyFolder(out):
        check_folder(out, name, identity, what)
        log = RecordLog(out / f"{name}.jsonl")
        if log.records:
            logger.info(f"resuming: {len(log.records)} records already in {log.path}")
        yield log


def run_diagnose(target: Target, out: Path, times: Sequence[float], repeats: int, progress: bool = True,
                 setup: str = "", effects: Optional[Sequence[str]] = None) -> str:
    """Diagnose `target` into `out` (resuming its records); returns the report text."""
    cfg, out = target.cfg, Path(out)
    logger.info(f"diagnosing {target.origin}")
    if not target.fine_tuned:
        logger.warning(f"warning: {target.origin}")
    data = TaskData(cfg, target.task, target.tokenizer)
    key = data.dev_key
    info = describe(key)
    with measurement_folder(out, "diagnosis", target.identity(), "diagnosis of another model or config") as log:
        diag = diagnose(target.model, cfg.analog, lambda m: data.evaluate(m, key), data.calib, times=times,
                        repeats=repeats, seed=cfg.sweep.seed, log=log, headline=lambda met: data.headline(key, met),
                        higher_is_better=data.higher_is_better, calibration_percentile=cfg.sweep.calibration_percentile,
                        task=key, effects=effects, progress=progress)
        n_eval = sum(len(next(iter(b.values()))) for b in data.evals[key])
        notes = [f"Model: {target.origin}.", f"Task: {info.display_name}, evaluation set `{key}` ({n_eval} examples).",
                 f"Analog config ({setup or 'defaults'}): {config_summary(cfg.analog)}.",
                 f"{repeats} device instance(s) per programmed row and time point, sweep seed {cfg.sweep.seed}; "
                 "records in `diagnosis.jsonl` (a re-run of the same command resumes from them)."]
        metric = {"headline": "headline", **info.metric_names}.get(info.headline_metric, info.headline_metric)
        write_report(diag, out, f"Diagnosis: {info.display_name}", notes, metric)
    logger.info(f"wrote {out / 'diagnosis.md'}, {out / 'diagnosis.png'}")
    return render_markdown(diag, f"Diagnosis: {info.display_name}", notes, metric)


def command(target: str, task: Optional[str], out: Optional[str], times: str, repeats: int,
            config: Optional[str] = None, glue_dir: Optional[str] = None, overrides: Sequence = (),
            progress: bool = True, effects: Optional[str] = None) -> str:
    """The `analogformer diagnose` command: resolve TARGET, pick the output folder, run, return the report."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats must be a whole number >= 1, got {repeats!r}")
    times_s = parse_times(times)
    names = None
    if effects is not None:
        names = [e.strip() for e in effects.split(",") if e.strip()]
        bad = [e for e in names if e not in EFFECTS]
        if bad or not names:
            raise ValueError(f"--effects {effects!r}: unknown {bad}; choose from {', '.join(EFFECTS)}")
    t = load_target(target, task, config, glue_dir, overrides)
    out, setup = output_and_setup(t, target, out, config, overrides, "diagnosis")
    return run_diagnose(t, out, times_s, repeats, progress, setup, names)


def output_and_setup(t, target: str, out: Optional[str], config: Optional[str], overrides,
                     kind: str) -> tuple:
    """(output folder, one line saying where the settings came from) of a measurement command
    (`kind`: "diagnosis", "sensitivity") on a loaded target: a study YAML defaults to
    <output_dir>/<kind>/<task>; a model folder needs --out."""
    if out is None:
        if not Path(target).is_file():
            raise ValueError(f"--out is needed when TARGET is a model folder (a study YAML defaults to "
                             f"<output_dir>/{kind}/<task>)")
        out = str(Path(t.cfg.output_dir) / kind / t.task)
    setup = f"study {target}" if Path(target).is_file() else (f"study {config}" if config else "defaults")
    if overrides:
        setup += " with " + " ".join(f"--set {o}" if isinstance(o, str) else f"--set {o[0]}={o[1]}" for o in overrides)
    return Path(out), setup
