"""AnalogLinear: an nn.Linear whose matmul runs on simulated PCM crossbar tiles.

Forward pipeline (DESIGN §4.3), each stage an identity when its config is off:

    DAC (clip to [-r, r], `dac.bits` levels)  ->  weight view  ->  per-tile matmul
    ->  output noise + ADC per tile [-> bound management: re-read saturated tiles]
    ->  digital scale (w_max · r · drift compensation)
    ->  digital partial-sum add over row tiles  ->  digital bias

r is the layer's range, or per token (and row tile) with absmax input scaling; the DAC,
ADC, bound management and compensation reads are in `periphery.py`.

The weight view depends on the mode:
* training (`module.train()`): the live `weight`, normalized per tile, plus the HWA
  weight-noise hook if one is set (`training.py`); periphery noise from the global RNG.
* programmed inference (`eval()` after `inference.program`): the conductances programmed
  once and drifted to t (`inference.drift`), read as (G+ − G−)/g_max; noise from the
  layer's seeded generator.
* otherwise: the live weights (ideal devices) through the configured periphery.

With every non-ideality off (`AnalogConfig.ideal()`) and no programmed state, the forward
is exactly `F.linear`.

Layout: the weight is held transposed and cut into K row tiles of R rows (padded with
zero rows when tiles differ in size), shape (K, R, out); each row tile is one GEMM on its
slice of the inputs (a batched GEMM on strided tiles is ~3× slower on CPU). Column tiles
need no split: their ADC and scales act per column. The fused no-grad path of programmed
inference is in `fused.py`.

Programmed state per layer, in bytes per weight: the current read weights (4 in float32,
the weight's dtype; kept pre-multiplied by the DAC/ADC code factor, `read_weights()` gives
them normalized), plus a few (row tile, column) vectors (scale, compensation reference and
factor) and the programming generator's state (5 KB on the CPU), and one shared
output-noise pool per model (`ADCConfig.noise_pool_size` floats, 32 MiB default). The
programmed conductances G± and drift exponents ν± (16 B/weight in float32) are not held:
they are a deterministic function of the weights and the programming draws, so every
`drift` regenerates them from the weights and the generator state saved at `program`
(`programmed_devices()`), bit for bit the tensors `program` drew — at the cost of the
programming draws once per read. The weights must therefore stay as they were programmed
(checked: a changed weight is an error that says to program again). Nothing is kept when
the layer is not programmed.

Device and dtype: state and draws follow the weight's device (generators included); the
physics run in float32 (or the weight's dtype if wider), the read weights are stored in
the weight's dtype (bfloat16 models: 2 B/weight).
"""
from __future__ import annotations

import copy
import random
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AnalogConfig, PCMConfig
from ..device import pcm
from ..device.conductance import conductances_to_weight, weight_scales, weight_to_conductances
from .fused import FusedInference
from .periphery import Periphery
from .tile import ReadoutSTE, levels, split_sizes


class AnalogLinear(FusedInference, Periphery, nn.Linear):
    """nn.Linear on PCM tiles. `weight` stays a real Parameter; state-dict keys are
    nn.Linear's plus `input_range` (the DAC range r)."""

    # the programmed state (non-persistent buffers; None when not programmed)
    _STATE = ("_w_scale", "_w_read", "_out_scale", "_comp_ref", "_comp_factor")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: Optional[AnalogConfig] = None, name: str = "",
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.config = config if config is not None else AnalogConfig()
        if not isinstance(self.config, AnalogConfig):
            raise ValueError(f"AnalogLinear {name!r}: config must be an AnalogConfig, "
                             f"got {type(self.config).__name__}")
        self.name = name
        tile = self.config.tile
        self.row_sizes: List[int] = split_sizes(in_features, tile.rows, tile.split_policy)
        self.col_sizes: List[int] = split_sizes(out_features, tile.cols, tile.split_policy)
        self.tile_rows = max(self.row_sizes)
        n_pad = len(self.row_sizes) * self.tile_rows - in_features
        self.input_range = nn.Parameter(torch.tensor(float(self.config.dac.init_range), device=device,
                                                     dtype=dtype))
        # HWA hook: maps normalized tiled weights (K, R, out) to noisy ones in training mode.
        self.weight_noise: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        if n_pad:
            idx, src = [], 0
            for size in self.row_sizes:
                idx += list(range(src, src + size)) + [in_features] * (self.tile_rows - size)
                src += size
            self.register_buffer("_pad_index", torch.tensor(idx, device=device), persistent=False)
        else:
            self._pad_index = None
        for buf in self._STATE:
            self.register_buffer(buf, None, persistent=False)
        self._generator: Optional[torch.Generator] = None
        self._prog_rng_state: Optional[torch.Tensor] = None  # the generator at `program` (regenerates G, ν)
        self._prog_check: Optional[tuple] = None  # fingerprint of the programmed weights
        self._prog_config: Optional[tuple] = None  # (PCMConfig, per-column scales) as programmed
        self._offset_rng: Optional[random.Random] = None  # pool offsets, seeded with the generator
        self._noise_pool: Optional[torch.Tensor] = None  # shared by all layers of a model
        self._train_noise_pool: Optional[torch.Tensor] = None  # HWA training, see training.py
        self._w_read_scale = 1.0  # _w_read = normalized read weights × this factor
        self._fast = None  # cached constants of the fused inference path
        self._state_version = 0
        self.t_seconds: Optional[float] = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_linear(cls, linear: nn.Module, config: AnalogConfig, name: str = "",
                    transposed: bool = False) -> "AnalogLinear":
        """Wrap an nn.Linear (sharing its Parameters) or a GPT-2 Conv1D (`transposed=True`,
        weight (in, out), transposed once into a new Parameter)."""
        w = linear.weight
        out_f, in_f = (w.shape[1], w.shape[0]) if transposed else (w.shape[0], w.shape[1])
        bias = getattr(linear, "bias", None)
        new = cls(in_f, out_f, bias is not None, config=config, name=name,
                  device=w.device if w.device.type != "meta" else None, dtype=w.dtype)
        if transposed:
            new.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=w.requires_grad)
        else:
            new.weight = w
        if bias is not None:
            new.bias = bias
        new.train(linear.training)
        return new

    @property
    def num_tiles(self) -> int:
        return len(self.row_sizes) * len(self.col_sizes)

    @property
    def programmed(self) -> bool:
        return self._w_read is not None

    def extra_repr(self) -> str:
        c = self.config
        return (f"{super().extra_repr()}, tiles={len(self.row_sizes)}x{len(self.col_sizes)}, "
                f"dac_bits={c.dac.bits}, adc_bits={c.adc.bits}, input_scaling={c.dac.input_scaling}, "
                + (f"bound_management={c.adc.bound_management}, " if c.adc.bound_management else "") +
                f"programmed={self.programmed}" + (f", t={self.t_seconds:g}s" if self.programmed else ""))

    # ------------------------------------------------------------------ layout helpers
    def _to_tiles(self, w: torch.Tensor) -> torch.Tensor:
        """(out, in) weight -> (K, R, out), zero rows where a row tile is short."""
        wt = w.t()
        if self._pad_index is not None:
            wt = torch.cat([wt, wt.new_zeros(1, wt.shape[1])]).index_select(0, self._pad_index)
        return wt.reshape(len(self.row_sizes), self.tile_rows, self.out_features)

    def _row_tiles(self, wn: torch.Tensor):
        """[(first input, last input + 1, weights (rows, out))] of each row tile of the tiled
        weights wn (K, R, out), without the padding rows of short tiles."""
        tiles, start = [], 0
        for k, size in enumerate(self.row_sizes):
            tiles.append((start, start + size, wn[k] if size == wn.shape[1] else wn[k, :size]))
            start += size
        return tiles

    def _valid_rows(self) -> torch.Tensor:
        """(K, R, 1) mask of real (non-padding) rows."""
        m = torch.zeros(len(self.row_sizes), self.tile_rows, 1, device=self.weight.device)
        for k, size in enumerate(self.row_sizes):
            m[k, :size] = 1.0
        return m

    # ------------------------------------------------------------------ forward stages
    def _periphery_off(self) -> bool:
        c = self.config
        return c.dac.bits is None and c.adc.bits is None and c.adc.output_noise_std is None

    def set_generator(self, generator: Optional[torch.Generator]) -> None:
        """The seeded source of this layer's read noise, output noise and pool offsets."""
        self._generator = generator
        self._offset_rng = None if generator is None else random.Random(generator.initial_seed())

    def _weight_view(self):
        """-> (normalized tiled weights (K, R, out), w_max scales (K, out))."""
        if self.programmed and not self.training:
            return self.read_weights(), self._out_scale
        wt = self._to_tiles(self.weight)
        scale = weight_scales(wt, self.col_sizes, self.config.tile.weight_scale == "column")
        wn = wt / scale.unsqueeze(1)
        if self.training and self.weight_noise is not None:
            wn = self.weight_noise(wn)
        return wn, scale

    def _bad_input(self, x: torch.Tensor) -> ValueError:
        return ValueError(f"AnalogLinear {self.name or '<unnamed>'}: input contains NaN or inf; "
                          f"check the layer feeding it (shape {tuple(x.shape)})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # programmed inference first: the hot path of every sweep, kept to three checks
        if self._generator is not None and not self.training and not torch.is_grad_enabled():
            return self._inference_forward(x)
        if (self._periphery_off() and not self.programmed
                and not (self.training and self.weight_noise is not None)):
            if not torch.isfinite(x.sum()):
                raise self._bad_input(x)
            return F.linear(x, self.weight, self.bias)
        if not torch.isfinite(x.sum()):
            raise self._bad_input(x)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        xd, unit, r = self._dac(x2)
        wn, scale = self._weight_view()
        adc = self.config.adc
        managed = adc.bound_management is not None
        fused = torch.is_grad_enabled() and adc.bits is not None and not torch.is_tensor(unit)
        if fused:  # GEMM straight into ADC code units: the scalar goes onto the (small) weights
            code = levels(adc.bits) / adc.bound
            wn = wn * (unit * code)
        if len(self.row_sizes) == 1:
            ys = [torch.matmul(xd, wn[0])]
        else:  # one plain GEMM per row tile on its slice of the inputs (split: one cat backward)
            ys = [torch.mm(xt, w) for xt, (_, _, w) in
                  zip(torch.split(xd, self.row_sizes, dim=1), self._row_tiles(wn))]
        if fused:
            # noise + ADC + gain + partial sums + bias as one autograd node (one mask per tile)
            noise = (self._output_noise((len(ys),) + ys[0].shape, ys[0].dtype, ys[0].device)
                     if adc.output_noise_std is not None else None)
            gain = scale.unsqueeze(1) * (r / code)  # ADC codes -> output units
            noise_std, n = float((adc.output_noise_std or 0.0) * code), levels(adc.bits)
            if managed:  # re-reads of saturated tiles replace GEMM outputs (and noise) before the readout
                ys, noise, mult = self._bound_manage_readout(x2, r, ys, noise, noise_std, n, wn)
                gain = gain if mult is None else gain * mult
            out = ReadoutSTE.apply(gain, self.bias, noise, noise_std, float(n), *ys)
            return out.reshape(*shape[:-1], self.out_features)
        y, code = self._adc(torch.stack(ys), unit)
        if managed:
            y = self._bound_manage(x2, r, y, wn, unit, code)
        gain = scale.unsqueeze(1) * (r * code)  # (K, 1 or N, out); r: (), (N, 1) or (K, N, 1)
        if len(self.row_sizes) > 1:
            y, gain = (y * gain).sum(0), 1.0
        else:
            y, gain = y[0], gain[0]
        if self.bias is not None:
            out = torch.addcmul(self.bias, y, gain) if torch.is_tensor(gain) else y + self.bias
        else:
            out = y * gain
        return out.reshape(*shape[:-1], self.out_features)

    def _mvm_alpha(self) -> float:
        """Factor from DAC codes × normalized weights to ADC codes (1 when the DAC is off:
        then the factor depends on r and is applied at run time)."""
        c = self.config
        if c.dac.bits is None:
            return 1.0
        code = levels(c.adc.bits) / c.adc.bound if c.adc.bits is not None else 1.0
        return code / levels(c.dac.bits)

    def read_weights(self) -> torch.Tensor:
        """Normalized weights (G+ − G−)/g_max read at the current time, (K, R, out)."""
        if not self.programmed:
            raise ValueError(f"AnalogLinear {self.name or '<unnamed>'}: not programmed")
        return self._w_read / self._w_read_scale

    def programmed_state_bytes(self) -> int:
        """Bytes of the programmed state this layer holds (0 when not programmed): its
        state tensors and the saved generator state, counted by size (the shared
        output-noise pool is the model's, not counted here)."""
        ts = [t for t in (getattr(self, b) for b in self._STATE) if t is not None]
        if self._prog_rng_state is not None:
            ts.append(self._prog_rng_state)
        return sum(t.numel() * t.element_size() for t in ts)

    def invalidate(self) -> None:
        """Forget cached inference constants (call after editing `config` in place)."""
        self._state_version += 1

    # ------------------------------------------------------------------ programmed devices
    def _physics_dtype(self) -> torch.dtype:
        """float32, or the weight's dtype when that is wider (float64)."""
        dt = self.weight.dtype
        return dt if dt.is_floating_point and torch.finfo(dt).bits > 32 else torch.float32

    def _targets(self, cfg: PCMConfig, per_column: bool):
        """-> (target conductances (2, K, R, out) in µS, w_max scales (K, out)) of the
        current weights, in the physics dtype."""
        wt = self._to_tiles(self.weight.detach().to(self._physics_dtype()))
        scale = weight_scales(wt, self.col_sizes, per_column)
        wn = (wt / scale.unsqueeze(1)).clamp_(-1.0, 1.0)
        return torch.stack(weight_to_conductances(wn, cfg.g_max_us)), scale

    def _weight_check(self, scale: torch.Tensor) -> tuple:
        """A fingerprint of the weights: the sum of their bit patterns as integers (exact, so
        independent of thread count and summation order) and the w_max scales."""
        w = self.weight.detach().contiguous()
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[w.element_size()]
        return int(w.view(bits).sum(dtype=torch.int64)), scale

    @torch.no_grad()
    def programmed_devices(self):
        """-> (G± programmed (2, K, R, out) µS, drift exponents ν± (2, K, R, out) or None when
        drift is off): the very tensors `program` drew, regenerated from the weights and the
        saved generator state (they are not held; see the module docstring)."""
        if not self.programmed:
            raise ValueError(f"AnalogLinear {self.name or '<unnamed>'}: not programmed")
        cfg, per_column = self._prog_config  # as programmed, whatever config edits came since
        g_target, scale = self._targets(cfg, per_column)
        if self._prog_check is not None:
            bits, sc = self._prog_check
            if self._weight_check(scale)[0] != bits or not torch.equal(scale, sc):
                raise ValueError(
                    f"AnalogLinear {self.name or '<unnamed>'}: the weights changed since program(); the "
                    "programmed devices are regenerated from the programmed weights, so call "
                    "analogformer.program(model, seed) again after editing or training them")
        gen = torch.Generator(device=g_target.device)
        gen.set_state(self._prog_rng_state)
        g_prog = pcm.program_conductance(g_target, cfg, gen)
        nu = pcm.sample_drift_exponents(g_target, cfg, gen) if cfg.drift else None
        return g_prog, nu

    # ------------------------------------------------------------------ life cycle
    @torch.no_grad()
    def program(self, generator: torch.Generator) -> None:
        """Map weights to conductances, sample programming noise and drift exponents once,
        and read the drift-compensation reference right after programming (t = 0). Only the
        read weights are kept; G± and ν± are regenerated by `programmed_devices()`."""
        cfg = copy.copy(self.config.pcm)
        self._prog_config = (cfg, self.config.tile.weight_scale == "column")
        g_target, scale = self._targets(*self._prog_config)
        self.set_generator(generator)
        self._prog_rng_state = generator.get_state()
        g_prog = pcm.program_conductance(g_target, cfg, generator)
        if cfg.drift:  # the ν draws, so that later draws (reads) come where they always did
            pcm.skip_drift_exponents(g_target, cfg, generator)
        del g_target
        self._prog_check = self._weight_check(scale)
        self._w_scale = scale
        self._w_read = conductances_to_weight(g_prog[0], g_prog[1], cfg.g_max_us).to(self.weight.dtype)
        del g_prog
        self._w_read_scale = 1.0
        self.t_seconds = 0.0
        # the reference is kept whether or not compensation is on, so one programmed
        # instance can be evaluated with and without it
        self._comp_ref = self._readout_level()
        self._comp_factor = torch.ones_like(scale)
        self._out_scale = scale.clone()
        self._scale_read()

    @torch.no_grad()
    def drift(self, t_seconds: float) -> None:
        """Conductances at t seconds after programming (fresh 1/f read noise) and, if
        enabled, the global drift-compensation factor reference / current."""
        if not self.programmed:
            raise ValueError(f"AnalogLinear {self.name or '<unnamed>'}: drift() before program(); "
                             "call analogformer.program(model, seed) first")
        cfg = self.config.pcm
        g_prog, nu = self.programmed_devices()
        g = pcm.conductance_at(g_prog, nu, float(t_seconds), cfg, self._generator)
        del g_prog, nu
        torch.sub(g[0], g[1], out=self._w_read).div_(cfg.g_max_us)
        self._w_read_scale = 1.0
        del g
        self.t_seconds = float(t_seconds)
        # the compensation read is always taken, so switching compensation on/off later
        # (`set_compensation`) evaluates the very same conductances both ways
        self._comp_factor = self._comp_ref / self._readout_level().clamp_min(1e-12)
        self._scale_read()
        self.set_compensation(self.config.compensation.enabled)

    def _scale_read(self) -> None:
        """Keep the read weights in the MVM's code units (the DAC/ADC factor folded in),
        so programmed inference needs no extra pass; `read_weights()` undoes it."""
        alpha = self._mvm_alpha()
        self._w_read.mul_(alpha / self._w_read_scale)
        self._w_read_scale = alpha
        self.invalidate()

    def set_compensation(self, enabled: bool) -> None:
        """Apply (or drop) the drift-compensation factor of the current read."""
        if not self.programmed:
            raise ValueError(f"AnalogLinear {self.name or '<unnamed>'}: set_compensation() before program()")
        self._out_scale = self._w_scale * self._comp_factor if enabled else self._w_scale.clone()
        self.invalidate()

    def unprogram(self) -> None:
        """Drop the programmed state: back to live (ideal-device) weights."""
        for buf in self._STATE:
            setattr(self, buf, None)
        self._prog_rng_state = self._prog_check = self._prog_config = None
        self.set_generator(None)
        self._noise_pool = None
        self.invalidate()
        self.t_seconds = None
