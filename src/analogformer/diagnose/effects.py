"""The non-idealities a diagnosis switches, as one registry, and the rows built from it.

`EFFECTS` maps a name to an `Effect`: how to tell whether a config has it on, and how to
switch it off (in place). A new periphery option is one entry. Two kinds:

* an *effect* (DAC, ADC, output noise, programming noise, drift, read noise, drift
  compensation, bound management) is on or off: the diagnosis measures the config with only
  it on ("only N": every other effect off) and with only it off ("all but N");
* a *choice* (per-tile vs per-column conductance scale, static vs absmax DAC ranges) has no
  "off": the diagnosis measures the config with the other choice ("all on, <alternative>").

Everything that no entry switches (tile geometry, targets, γ, device constants, ranges)
stays as the given config has it, so "ideal tiles" is `AnalogConfig.ideal()` on the same
tiles.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..config import AnalogConfig, from_dict, to_dict


@dataclass(frozen=True)
class Effect:
    """One entry of `EFFECTS`."""

    label: str
    """How rows and plots name it ("DAC", "output noise")."""
    describe: str
    """One line on what switching it off means."""
    is_on: Callable[[AnalogConfig], bool]
    """Whether the config has it on (rows are made only for entries that are)."""
    switch_off: Callable[[AnalogConfig], None]
    """Switch it off in place (for a choice: switch to the alternative)."""
    alone: bool = True
    """Whether an "only N" row means anything (bound management needs an ADC; a choice has none)."""
    choice: bool = False
    """A choice between two options, not an effect: not switched off in "ideal tiles"."""
    alternative: Optional[Callable[[AnalogConfig], str]] = None
    """For a choice: the label of the alternative the given config is compared with."""


def _set(**fields):
    """switch_off that sets dotted fields: _set(**{"adc.bits": None})."""
    def apply(cfg: AnalogConfig) -> None:
        for path, value in fields.items():
            section, name = path.split(".")
            setattr(getattr(cfg, section), name, value)
    return apply


def _other_scale(cfg: AnalogConfig) -> str:
    return "column" if cfg.tile.weight_scale == "tile" else "tile"


def _other_scaling(cfg: AnalogConfig) -> str:
    return "absmax_tile" if cfg.dac.input_scaling == "static" else "static"


EFFECTS: Dict[str, Effect] = {
    "dac": Effect("DAC", "input DAC off: no input clipping or quantization",
                  lambda c: c.dac.bits is not None, _set(**{"dac.bits": None})),
    "adc": Effect("ADC", "output ADC off: no saturation or quantization (nor bound management)",
                  lambda c: c.adc.bits is not None, _set(**{"adc.bits": None, "adc.bound_management": None})),
    "output_noise": Effect("output noise", "no Gaussian read-out noise on the tile outputs",
                           lambda c: c.adc.output_noise_std is not None, _set(**{"adc.output_noise_std": None})),
    "prog_noise": Effect("programming noise", "devices programmed exactly to their target conductance",
                         lambda c: c.pcm.prog_noise and c.pcm.gamma > 0, _set(**{"pcm.prog_noise": False})),
    "drift": Effect("drift", "conductances stay as programmed at every time",
                    lambda c: c.pcm.drift, _set(**{"pcm.drift": False})),
    "read_noise": Effect("read noise", "no 1/f read noise",
                         lambda c: c.pcm.read_noise and c.pcm.gamma > 0, _set(**{"pcm.read_noise": False})),
    "compensation": Effect("compensation", "no global drift compensation",
                           lambda c: c.compensation.enabled, _set(**{"compensation.enabled": False})),
    "bound_management": Effect("bound management", "a read beyond the ADC range is clipped, not re-read",
                               lambda c: c.adc.bound_management is not None,
                               _set(**{"adc.bound_management": None}), alone=False),
    "weight_scale": Effect("conductance scale", "the other conductance scale (per tile <-> per column)",
                           lambda c: True, lambda c: setattr(c.tile, "weight_scale", _other_scale(c)),
                           alone=False, choice=True, alternative=lambda c: f"per-{_other_scale(c)} scale"),
    "input_scaling": Effect("DAC input scaling", "the other DAC range (static <-> absmax per tile)",
                            lambda c: c.dac.bits is not None,
                            lambda c: setattr(c.dac, "input_scaling", _other_scaling(c)),
                            alone=False, choice=True, alternative=lambda c: f"{_other_scaling(c)} DAC range"),
}


@dataclass(frozen=True)
class Row:
    """One measured setting: a name (the records' `condition`), what it is, and its config
    (None for "digital"). `kind` is digital | ideal | all | only | all-but | alternative."""

    name: str
    kind: str
    config: Optional[AnalogConfig] = None
    effect: Optional[str] = None

    @property
    def programmed(self) -> bool:
        """Evaluated on programmed tiles, over device instances (else once, deterministic)."""
        return self.kind not in ("digital", "ideal")

    @property
    def timed(self) -> bool:
        """Whether anything in the row changes with time since programming (drift, read noise)."""
        pcm = self.config.pcm if self.config is not None else None
        return bool(pcm and self.programmed and (pcm.drift or (pcm.read_noise and pcm.gamma > 0)))


def _validated(cfg: AnalogConfig) -> AnalogConfig:
    """A fresh, validated copy (the switches edit fields after construction)."""
    return from_dict(AnalogConfig, to_dict(cfg))


def ideal_config(cfg: AnalogConfig) -> AnalogConfig:
    """`cfg` with every effect of `EFFECTS` off (choices kept): on SPEC defaults, this is
    `AnalogConfig.ideal()`."""
    out = copy.deepcopy(cfg)
    for e in EFFECTS.values():
        if not e.choice:
            e.switch_off(out)
    return _validated(out)


def only_config(cfg: AnalogConfig, name: str) -> AnalogConfig:
    """`cfg` with every effect but `name` off."""
    out = copy.deepcopy(cfg)
    for other, e in EFFECTS.items():
        if other != name and not e.choice:
            e.switch_off(out)
    return _validated(out)


def all_but_config(cfg: AnalogConfig, name: str) -> AnalogConfig:
    """`cfg` with `name` off (a choice: switched to the alternative)."""
    out = copy.deepcopy(cfg)
    EFFECTS[name].switch_off(out)
    return _validated(out)


def check_effects(names) -> List[str]:
    """`names` as a list of registered entries (None: all), or a ValueError listing them."""
    if names is None:
        return list(EFFECTS)
    bad = [n for n in names if n not in EFFECTS]
    if bad:
        raise ValueError(f"unknown non-ideality {bad}; registered: {list(EFFECTS)}")
    return list(names)


def build_rows(cfg: AnalogConfig, effects=None) -> List[Row]:
    """digital, ideal tiles, all on, then per entry that `cfg` has on: "only N" (effects
    that mean something alone) and "all but N" (for a choice: "all on, <alternative>")."""
    rows = [Row("digital", "digital"), Row("ideal tiles", "ideal", ideal_config(cfg)),
            Row("all on", "all", _validated(cfg))]
    for name in check_effects(effects):
        e = EFFECTS[name]
        if not e.is_on(cfg):
            continue
        if e.choice:
            rows.append(Row(f"all on, {e.alternative(cfg)}", "alternative", all_but_config(cfg, name), name))
            continue
        if e.alone:
            rows.append(Row(f"only {e.label}", "only", only_config(cfg, name), name))
        rows.append(Row(f"all but {e.label}", "all-but", all_but_config(cfg, name), name))
    return rows
