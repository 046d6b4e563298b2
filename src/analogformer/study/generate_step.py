"""Text generation of a study (causal-LM tasks): each prompt continued by each condition at
each of its time points, on device instance 0 — the very conductances of the sweep's repeat
0 (programmed from (sweep seed, "program", 0), read from (sweep seed, "read", 0, t)); the
forwards draw their noise from (sweep seed, "generate", t, condition, prompt) and sampling
from (generation seed, condition, t, prompt): values, never positions, so a resumed or grown
study writes the same texts.

Texts go to ``generations.jsonl`` as they are produced, one line per (task, condition, time,
prompt), appended and fsynced; a key is written once (a re-run skips it), and a truncated
last line of a killed run is dropped on resume.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..inference import drift, program, reseed_noise, set_compensation
from ..logs import get_logger
from ..seeding import derive_seed
from ..tasks.lm_generate import GenerationConfig, generate_text
from .records import JsonLinesLog
from .sweep import Condition, SweepConfig, _analog_model

__all__ = ["GenerationLog", "run_generations", "generation_key"]
logger = get_logger(__name__)
FILE = "generations.jsonl"


def generation_key(r: dict) -> Tuple:
    t = r.get("t_seconds")
    return (r["task"], r["condition"], None if t is None else float(t), r["prompt"])


class GenerationLog(JsonLinesLog):
    """Append-only JSON-lines file of generated texts; knows which keys it holds."""

    noun = "line"
    ensure_ascii = False

    def key(self, record: dict) -> Tuple:
        return generation_key(record)

    def _twice(self, key: Tuple, first: int, second: int) -> str:
        return f"{self.path}: {key} is there twice; two runs wrote to this folder: keep one of the two lines"

    def _again(self, key: Tuple) -> str:
        return f"{self.path}: {key} is already written (is another process running this study?)"

    def has(self, key: Tuple) -> bool:
        return key in self.done


def run_generations(gcfg: GenerationConfig, task: str, models: Dict[str, nn.Module], tokenizer,
                    conditions: Sequence[Condition], analog_cfg, sweep: SweepConfig, calib_batches,
                    out: Path, prepare: Optional[Callable[[nn.Module, Condition], None]] = None,
                    input_ranges: Optional[Dict[str, Dict[str, float]]] = None) -> List[dict]:
    """Generate what `generations.jsonl` in `out` lacks; returns the records written."""
    log = GenerationLog(Path(out) / FILE)
    conds = [c for c in conditions if gcfg.conditions is None or c.name in gcfg.conditions]
    written: List[dict] = []

    def emit(model: nn.Module, cond: Condition, t: Optional[float]) -> None:
        for prompt in gcfg.prompts:
            if log.has((task, cond.name, t, prompt)):
                continue
            if t is not None:
                reseed_noise(model, derive_seed(sweep.seed, "generate", float(t), cond.name, prompt))
            t0 = time.time()
            text, ids = generate_text(model, tokenizer, prompt, gcfg,
                                      seed=derive_seed(gcfg.seed, cond.name, None if t is None else float(t), prompt))
            rec = {"task": task, "condition": cond.name, "t_seconds": t, "repeat": 0, "prompt": prompt,
                   "text": text, "new_tokens": len(ids), "mode": gcfg.mode, "seconds": round(time.time() - t0, 2)}
            log.write(rec)
            written.append(rec)

    def missing(cond: Condition, t: Optional[float]) -> bool:
        return any(not log.has((task, cond.name, t, p)) for p in gcfg.prompts)

    for c in conds:
        if not c.analog and missing(c, None):
            emit(models[c.model], c, None)
    groups: Dict[Tuple, List[Condition]] = {}
    for c in conds:
        if c.analog:
            groups.setdefault((c.model, c.gamma, c.attention_bits, getattr(c, "weight_noise", None)), []).append(c)
    for (model_name, gamma, bits, noise), group in groups.items():
        times = [t for t in sweep.times_seconds if any(t in sweep.times_for(c.name) and missing(c, t) for c in group)]
        if not times:
            continue
        logger.info(f"{task}: generating {len(gcfg.prompts)} prompt(s) × {len(times)} time(s) on tiles "
                    f"({', '.join(c.name for c in group)})")
        model = _analog_model(models[model_name], model_name, gamma, bits, group[0], analog_cfg, sweep,
                              calib_batches, prepare, (input_ranges or {}).get(model_name))
        with torch.no_grad():
            program(model, seed=derive_seed(sweep.seed, "program", 0))
        for t in times:
            with torch.no_grad():
                drift(model, t, read_seed=derive_seed(sweep.seed, "read", 0, float(t)))
                if noise is not None:  # as the sweep's repeat 0 (`sweep._sweep_repeat`)
                    from ..inference import add_weight_noise
                    add_weight_noise(model, noise, seed=derive_seed(sweep.seed, "weight-noise", 0, float(t)))
            for c in group:
                if t in sweep.times_for(c.name) and missing(c, t):
                    set_compensation(model, c.compensation)
                    emit(model, c, t)
        del model
    return written
