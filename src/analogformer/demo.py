"""`analogformer demo`: one real MiniLM weight matrix on PCM tiles, its output error over time.

The matrix is the bundled MiniLM's first query projection (384×384, one 512×512 tile) and
its inputs are the activations that really reach it on a few sentences. For each time point
and device instance the layer is programmed, drifted and read; the error is
‖y − y_digital‖ / ‖y_digital‖ over all tokens, with and without global drift compensation.
A second table takes the error at 1 s apart: each non-ideality alone. Everything is computed
here, in well under a minute; nothing is stored.
"""
from __future__ import annotations

import copy
import statistics
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from . import inference
from .config import AnalogConfig
from .nn.linear import AnalogLinear

LAYER = "encoder.layer.0.attention.self.query"
SENTENCES = ["analog in-memory computing stores weights as conductances",
             "phase-change memory drifts after programming",
             "the movie was a delight from start to finish",
             "a crossbar multiplies a vector by a matrix in one step",
             "the weather was cold and the train was late"]
TIMES = ((1.0, "1 s"), (3600.0, "1 hour"), (86400.0, "1 day"), (604800.0, "1 week"), (2592000.0, "1 month"))
INSTANCES = 10


def _layer_and_inputs():
    """The digital nn.Linear `LAYER` of the bundled MiniLM and its real inputs (tokens, 384)."""
    from transformers import AutoModel, AutoTokenizer

    from .tasks.registry import default_model_path
    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    layer = model.get_submodule(LAYER)
    batch = tok(SENTENCES, return_tensors="pt", padding=True)
    seen: List[torch.Tensor] = []
    hook = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()) and None)
    with torch.no_grad():
        model(**batch)
    hook.remove()
    x = seen[0][batch["attention_mask"].bool()]  # real tokens only, no padding
    return layer, x


def _error(linear, cfg: AnalogConfig, x: torch.Tensor, t: float, seed: int, compensate: bool) -> float:
    layer = AnalogLinear.from_linear(linear, copy.deepcopy(cfg), name=LAYER).eval()
    inference.calibrate_input_ranges(layer, [x], percentile=99.99)
    with torch.no_grad():
        y_ref = F.linear(x, linear.weight, linear.bias)
        inference.program(layer, seed=seed)
        inference.drift(layer, t, read_seed=seed)
        inference.set_compensation(layer, compensate)
        return float((layer(x) - y_ref).norm() / y_ref.norm())


def _stats(values: List[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _alone(cfg: AnalogConfig) -> Dict[str, Callable[[AnalogConfig], None]]:
    """Each non-ideality of `cfg` alone on top of ideal devices and periphery."""
    def dac(c): c.dac = copy.deepcopy(cfg.dac)
    def adc(c): c.adc.bits, c.adc.bound = cfg.adc.bits, cfg.adc.bound
    def out_noise(c): c.adc.output_noise_std = cfg.adc.output_noise_std
    def prog(c): c.pcm.prog_noise = cfg.pcm.prog_noise
    def read(c): c.pcm.read_noise = cfg.pcm.read_noise
    return {f"input DAC ({cfg.dac.bits} bit)": dac, f"output ADC ({cfg.adc.bits} bit)": adc,
            f"output noise (σ {cfg.adc.output_noise_std})": out_noise, "programming noise": prog,
            "read noise": read}


def run(cfg: AnalogConfig | None = None, instances: int = INSTANCES) -> str:
    """The demo's text: error over time (± compensation), then the 1 s error by source."""
    cfg = cfg or AnalogConfig()
    linear, x = _layer_and_inputs()
    lines = [f"MiniLM `{LAYER}` ({linear.in_features}×{linear.out_features}) on PCM tiles, fed the "
             f"activations of {x.shape[0]} real tokens.",
             f"Relative output error ‖y − y_digital‖ / ‖y_digital‖, mean ± SD over {instances} device instances:",
             "", f"{'time after programming':>24} | {'no compensation':>15} | {'compensated':>13}"]
    for t, label in TIMES:
        row = [_stats([_error(linear, cfg, x, t, s, comp) for s in range(instances)]) for comp in (False, True)]
        lines.append(f"{label:>24} | {row[0]:>15} | {row[1]:>13}")
    lines += ["", "Where the error at 1 s comes from (each non-ideality alone, everything else ideal):", ""]
    for name, switch_on in _alone(cfg).items():
        c = AnalogConfig.ideal()
        c.tile = copy.deepcopy(cfg.tile)
        switch_on(c)
        lines.append(f"{name:>32} | {_stats([_error(linear, c, x, 1.0, s, False) for s in range(instances)])}")
    lines += ["", "Drift lowers every conductance over time. Global compensation rescales the outputs by a "
              "reference read and so takes out the mean decay, but not the device-to-device spread of the "
              "drift exponents nor the 1/f read noise, which grow with time. `analogformer study` measures "
              "what this costs a task's accuracy."]
    return "\n".join(lines)
