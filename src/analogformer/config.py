"""Small dataclass configs, one per concern, composed into `AnalogConfig`.

Every config validates itself in `__post_init__` and raises `ValueError` naming the field
and the fix. `None` means "off". Units are in the field names. Configs round-trip through
plain dicts (`to_dict` / `from_dict`), which is what YAML study files use; unknown keys are
errors that list the allowed ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

# the one table of what stays digital (heads, poolers, embedding projections)
from .nn.targets import DEFAULT_EXCLUDE


def fail(cls_name: str, name: str, msg: str) -> None:
    raise ValueError(f"{cls_name}.{name}: {msg}")


def check_positive(obj, name: str, allow_none: bool = False, integer: bool = False) -> None:
    v = getattr(obj, name)
    cls = type(obj).__name__
    if v is None:
        if allow_none:
            return
        fail(cls, name, "must be set (got None)")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(cls, name, f"must be a number, got {type(v).__name__} {v!r}")
    if integer and int(v) != v:
        fail(cls, name, f"must be an integer, got {v!r}")
    if not math.isfinite(v) or v <= 0:
        hint = " (use null/None to switch it off)" if allow_none else ""
        fail(cls, name, f"must be > 0, got {v!r}{hint}")


def check_nonneg(obj, name: str, allow_none: bool = False) -> None:
    v = getattr(obj, name)
    cls = type(obj).__name__
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        fail(cls, name, f"must be a finite number >= 0, got {v!r}")


def check_choice(obj, name: str, choices) -> None:
    v = getattr(obj, name)
    if v not in choices:
        fail(type(obj).__name__, name, f"must be one of {sorted(choices)}, got {v!r}")


@dataclass
class PCMConfig:
    """PCM device model of SPEC §2 (aihwkit's `PCMLikeNoiseModel` constants).

    The switches `prog_noise`, `drift`, `drift_spread` and `read_noise` turn one physical
    effect off each, for ablations and exact tests.
    """

    g_max_us: float = 25.0
    """Largest conductance of one device, in µS; a weight of max |W| maps to it."""
    prog_coeffs_us: Tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    """(c0, c1, c2) of the programming noise σ_prog = γ·max(c0 + c1·g/g_max + c2·(g/g_max)², 0),
    in µS for g_max = 25 µS (scaled by g_max/25 otherwise)."""
    t0_seconds: float = 20.0
    """Drift reference time t0: g(t) = g_prog·((t + t0)/t0)^(−ν)."""
    t_read_seconds: float = 250e-9
    """Duration of one read, t_read in the 1/f read-noise formula."""
    gamma: float = 1.0
    """Scales programming and read noise: 1.0 = today's devices, 0.5 = improved ones (drift
    unchanged); 0 switches both off."""
    prog_noise: bool = True
    """Programming noise on; False programs every device exactly to its target."""
    drift: bool = True
    """Conductance drift on; False keeps the programmed conductances at every time."""
    drift_spread: bool = True
    """Sample each device's drift exponent ν with spread σ_ν; False uses ν = μ_ν
    (deterministic drift)."""
    read_noise: bool = True
    """1/f read noise on (a fresh draw at every `drift`)."""
    nu_mean_coeffs: Tuple[float, float] = (-0.0155, 0.0244)
    """(a, b) of the mean drift exponent μ_ν = clamp(a·ln g_rel + b, lo, hi), g_rel = g_T/g_max."""
    nu_mean_clamp: Tuple[float, float] = (0.049, 0.1)
    """(lo, hi) clamp of μ_ν."""
    nu_std_coeffs: Tuple[float, float] = (-0.0125, -0.0059)
    """(a, b) of the drift-exponent spread σ_ν = clamp(a·ln g_rel + b, lo, hi)."""
    nu_std_clamp: Tuple[float, float] = (0.008, 0.045)
    """(lo, hi) clamp of σ_ν."""
    read_noise_coeff: float = 0.0088
    """a of the 1/f read-noise factor Q_s = min(a / max(g/g_max, 1e-3)^p, cap)."""
    read_noise_exponent: float = 0.65
    """p of Q_s."""
    read_noise_cap: float = 0.2
    """cap of Q_s."""
    read_noise_time: str = "t"
    """Time the 1/f read noise has accumulated over: "t" (SPEC §2, σ_nG ∝ sqrt(ln((t + t_read)/
    (2·t_read))), none right after programming) or "t_plus_t0" (aihwkit's `PCMLikeNoiseModel`: t + t0
    in that formula, the noise since programming started, so a read at t = 0 is already noisy)."""

    def __post_init__(self):
        for n in ("g_max_us", "t0_seconds", "t_read_seconds"):
            check_positive(self, n)
        check_nonneg(self, "gamma")
        check_choice(self, "read_noise_time", {"t", "t_plus_t0"})
        self.prog_coeffs_us = tuple(float(c) for c in self.prog_coeffs_us)
        if len(self.prog_coeffs_us) != 3:
            fail("PCMConfig", "prog_coeffs_us", "needs exactly 3 coefficients (c0, c1, c2)")
        for n in ("nu_mean_coeffs", "nu_mean_clamp", "nu_std_coeffs", "nu_std_clamp"):
            v = tuple(float(c) for c in getattr(self, n))
            if len(v) != 2:
                fail("PCMConfig", n, "needs exactly 2 numbers")
            setattr(self, n, v)
        for n in ("nu_mean_clamp", "nu_std_clamp"):
            lo, hi = getattr(self, n)
            if not 0 <= lo <= hi:
                fail("PCMConfig", n, f"must satisfy 0 <= low <= high, got {(lo, hi)}")


@dataclass
class TileConfig:
    """Crossbar geometry and how a weight matrix is cut into tiles."""

    rows: int = 512
    """Crossbar rows of one tile (= inputs of the matrix piece it holds)."""
    cols: int = 512
    """Crossbar columns of one tile (= outputs)."""
    split_policy: str = "balanced"
    """"balanced" cuts a dimension into the fewest tiles of near-equal size (aihwkit's way);
    "fill_first" fills whole tiles first (512, 512, rest), the "512-first" policy of seed 000."""
    weight_scale: str = "tile"
    """One conductance scale (max |W| ↦ g_max) per "tile" or per "column" of each tile."""

    def __post_init__(self):
        check_positive(self, "rows", integer=True)
        check_positive(self, "cols", integer=True)
        self.rows, self.cols = int(self.rows), int(self.cols)
        check_choice(self, "split_policy", {"balanced", "fill_first"})
        check_choice(self, "weight_scale", {"tile", "column"})


@dataclass
class DACConfig:
    """Input DAC: `bits` symmetric levels over a range [-r, r] per layer, or per token (noise management)."""

    bits: Optional[int] = 8
    """Resolution of the input DAC; None switches the DAC off entirely (no clipping, no
    quantization, no scaling)."""
    init_range: float = 3.0
    """Initial range r of every layer; normally replaced by a range set from data
    (`calibrate_input_ranges`, the study's `sweep.calibration_percentile`)."""
    input_scaling: str = "static"
    """The DAC range r (aihwkit's "noise management"): "static" = the layer's r (SPEC §3: from data,
    learned in HWA training, frozen for inference); "absmax_tile" = per token and row tile, max |x| of
    the token's inputs on that tile (aihwkit's AbsMax: each tile manages its own inputs); "absmax_layer"
    = per token, max |x| over the whole layer input, shared by its row tiles (ours). Absmax ranges scale
    inputs digitally before the DAC and back after the ADC. "absmax" = deprecated name of "absmax_layer"."""

    def __post_init__(self):
        check_positive(self, "bits", allow_none=True, integer=True)
        check_positive(self, "init_range")
        if self.input_scaling == "absmax":
            warnings.warn('DACConfig.input_scaling="absmax" is deprecated: it is "absmax_layer" (one range per token '
                          'over the layer); "absmax_tile" is aihwkit\'s AbsMax', DeprecationWarning, stacklevel=3)
            self.input_scaling = "absmax_layer"
        check_choice(self, "input_scaling", {"static", "absmax_tile", "absmax_layer"})


@dataclass
class ADCConfig:
    """Output ADC over [-bound, bound] in units of (input 1 on one row × weight 1)."""

    bits: Optional[int] = 10
    """Resolution of the output ADC; None switches ADC quantization and saturation off."""
    bound: float = 10.0
    """Saturation of the ADC, ±bound (10 "fully on" rows reach it)."""
    output_noise_std: Optional[float] = 0.04
    """Gaussian read-out noise per tile output, in the same units; None = off."""
    noise_pool_size: Optional[int] = 2 ** 23
    """In programmed inference, output noise is read from a pool of this many i.i.d. N(0, 1) samples
    drawn at `program` time (one pool per model), at a random offset per call: all values within one
    call are distinct draws, and the pool spares the CPU a `randn` that costs ~30 % of a 512×512
    matmul. None draws fresh noise on every call (training always does)."""
    bound_management: Optional[str] = None
    """None: a read beyond the ADC range is clipped. "iterative" (aihwkit's bound management): when a
    token's read of a tile reaches the ADC's full-scale code at any output of that tile, the token's
    input slice is halved and the tile read again (the result doubled back digitally), until no
    output is at full scale or `bound_management_max_iters` re-reads were made."""
    bound_management_max_iters: int = 4
    """Most re-reads of one tile read under "iterative" bound management (inputs down to 2^-N). aihwkit stops
    at a factor > 0.25·(DAC levels) (`max_bm_res`) or > 1000: 4 re-reads with a 7-bit DAC, 5 with 8 bits."""

    def __post_init__(self):
        check_positive(self, "bits", allow_none=True, integer=True)
        check_positive(self, "bound")
        check_positive(self, "output_noise_std", allow_none=True)
        check_positive(self, "noise_pool_size", allow_none=True, integer=True)
        if self.bound_management not in (None, "iterative"):
            fail("ADCConfig", "bound_management", f"must be null (off) or 'iterative', got {self.bound_management!r}")
        elif self.bound_management is not None and self.bits is None:
            fail("ADCConfig", "bound_management", "re-reads tiles that saturate the ADC, and bits=None has "
                 "no ADC range: set bound_management to null or give the ADC bits")
        check_positive(self, "bound_management_max_iters", integer=True)
        self.bound_management_max_iters = int(self.bound_management_max_iters)


@dataclass
class CompensationConfig:
    """Global drift compensation (seed 001 §2.2.1)."""

    enabled: bool = True
    """Multiply each output by reference / current mean |output| of a one-hot read (the
    reference is read right after programming)."""
    granularity: str = "tile"
    """One compensation factor per "tile" or per "column"."""

    def __post_init__(self):
        check_choice(self, "granularity", {"tile", "column"})


@dataclass
class AnalogConfig:
    """Everything `analogize` needs: device, tiles, periphery, compensation, targets. In YAML,
    `analog: {preset: NAME, ...}` starts from a named preset (`PRESETS`: spec, aihwkit-inference, llm)
    and applies the other keys over it, section by section."""

    pcm: PCMConfig = field(default_factory=PCMConfig)
    """The PCM device model (noise, drift)."""
    tile: TileConfig = field(default_factory=TileConfig)
    """Tile geometry and how matrices are cut into tiles."""
    dac: DACConfig = field(default_factory=DACConfig)
    """The input DAC."""
    adc: ADCConfig = field(default_factory=ADCConfig)
    """The output ADC and the read-out noise."""
    compensation: CompensationConfig = field(default_factory=CompensationConfig)
    """Global drift compensation."""
    include: Tuple[str, ...] = ()
    """Regexes on fully-qualified module names that become analog; empty = every nn.Linear /
    HF Conv1D not excluded."""
    exclude: Tuple[str, ...] = DEFAULT_EXCLUDE
    """Regexes on module names that stay digital; the default keeps output heads, poolers and
    embedding projections digital (`nn.targets.DEFAULT_EXCLUDE`)."""

    def __post_init__(self):
        for name, cls in (("pcm", PCMConfig), ("tile", TileConfig), ("dac", DACConfig),
                          ("adc", ADCConfig), ("compensation", CompensationConfig)):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, from_dict(cls, v, prefix=f"analog.{name}"))
            elif not isinstance(v, cls):
                fail("AnalogConfig", name, f"must be a {cls.__name__}, got {type(v).__name__}")
        for n in ("include", "exclude"):
            v = getattr(self, n)
            if isinstance(v, str) or not all(isinstance(p, str) for p in v):
                fail("AnalogConfig", n, "must be a list of regex strings")
            setattr(self, n, tuple(v))

    @classmethod
    def ideal(cls) -> "AnalogConfig":
        """Every non-ideality off: an analogized model computes exactly what nn.Linear does."""
        return cls(pcm=PCMConfig(prog_noise=False, drift=False, read_noise=False),
                   dac=DACConfig(bits=None), adc=ADCConfig(bits=None, output_noise_std=None),
                   compensation=CompensationConfig(enabled=False))

    @classmethod
    def preset(cls, name: str, **overrides) -> "AnalogConfig":
        """The preset `name` of `PRESETS`, with `overrides` applied over it: a mapping changes only
        the keys it names (`adc={"bits": 8}`), a config object replaces its section."""
        return from_dict(cls, {"preset": name, **overrides})


# `AnalogConfig.preset(name)` / YAML `analog: {preset: name}`: one entry each, a function returning a fresh config
PRESETS: Dict[str, Callable[[], AnalogConfig]] = {
    "spec": AnalogConfig,  # SPEC §2–3: 8-bit DAC over a static range, 10-bit ADC over ±10, noise 0.04
    # aihwkit's InferenceRPUConfig() defaults: 7-bit DAC, per-tile AbsMax; 9-bit ADC over ±12, iterative
    # bound management (4 re-reads, where aihwkit's `max_bm_res` stops at 7 bits), output noise 0.06;
    # PCMLikeNoiseModel (read noise over t + t0); global drift compensation per tile
    "aihwkit-inference": lambda: AnalogConfig(
        pcm=PCMConfig(read_noise_time="t_plus_t0"), dac=DACConfig(bits=7, input_scaling="absmax_tile"),
        adc=ADCConfig(bits=9, bound=12.0, output_noise_std=0.06, bound_management="iterative",
                      bound_management_max_iters=4)),
    # decoder LMs (measured on SmolLM2-135M, WikiText-2; docs/periphery.md): SPEC devices, DAC and ADC,
    # with each column's conductances using the full range (per-column scale), drift compensated per
    # column, per-token absmax per tile and iterative bound management. Honest: every noise source on.
    "llm": lambda: AnalogConfig(
        tile=TileConfig(weight_scale="column"), compensation=CompensationConfig(granularity="column"),
        dac=DACConfig(input_scaling="absmax_tile"), adc=ADCConfig(bound_management="iterative")),
}


def _expand_preset(data: dict, prefix: str) -> dict:
    """{"preset": name, **overrides} -> the preset's full dict with the overrides merged in."""
    name, data = data["preset"], {k: v for k, v in data.items() if k != "preset"}
    if not isinstance(name, str) or name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), 1, 0.5) if isinstance(name, str) else []
        hint = "".join(f"; did you mean {c!r}?" for c in close)
        raise ValueError(f"{prefix + '.' if prefix else ''}preset: unknown preset {name!r}{hint} "
                         f"(presets: {', '.join(PRESETS)})")
    return _merge(to_dict(PRESETS[name]()), data)


def _merge(base: dict, over: dict) -> dict:
    """`base` with `over` applied: nested mappings merge key by key, anything else replaces."""
    return {**base, **{k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in over.items()}}


# ---------------------------------------------------------------- dict round trip

def to_dict(cfg) -> dict:
    """Dataclass -> plain dict of builtins (tuples become lists), for YAML."""
    def plain(x):
        return to_dict(x) if dataclasses.is_dataclass(x) else x
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = ([plain(x) for x in v] if isinstance(v, tuple) else
                       {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else plain(v))
    return out


def _type_ok(value: Any, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float or tp is int:
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    if origin in (tuple, list, typing.Tuple, typing.List):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis or origin in (list, typing.List):
            return all(_type_ok(v, args[0]) for v in value) if args else True
        return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args)) if args else True
    if origin is dict:
        key = (typing.get_args(tp) or (Any,))[0]
        return isinstance(value, dict) and all(_type_ok(k, key) for k in value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, dict))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "").replace("NoneType", "null")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a dict, strictly: unknown keys and wrong types are errors. An
    AnalogConfig mapping may name a `preset`, which the other keys are applied over."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    if cls is AnalogConfig and "preset" in data:
        data = _expand_preset(data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{prefix or cls.__name__}: unknown key(s) {unknown}; "
                         f"allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}.{name}" if prefix else name
        sub = _dataclass_in(tp)
        if sub is not None and isinstance(value, dict):
            kwargs[name] = from_dict(sub, value, prefix=key)
            continue
        if not _type_ok(value, tp):
            raise ValueError(f"{key}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")
        if isinstance(value, list) and typing.get_origin(tp) in (tuple, typing.Tuple):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{prefix + ': ' if prefix else ''}{e}") from None
    except (TypeError, KeyError, AttributeError, OverflowError) as e:  # a value of the right type but wrong shape
        raise ValueError(f"{prefix or cls.__name__}: invalid values {kwargs!r} ({type(e).__name__}: {e})") from None


def _dataclass_in(tp):
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) or () if dataclasses.is_dataclass(a)), None)
