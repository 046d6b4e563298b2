"""The fused no-grad inference path of a programmed AnalogLinear (a mixin).

Same pipeline as `AnalogLinear.forward` — DAC, per-tile GEMM, output noise, ADC, gain,
partial sums, bias — with the programmed weights stored pre-scaled in ADC code units, the
periphery constants cached per programmed state, one GEMM per row tile on its slice of the
inputs, and long inputs processed in row blocks whose outputs stay in cache while the
element-wise passes run over them.

Where the time goes (a 512×512 layer, batch 128, 2 cores): the GEMM, then six or seven
element-wise passes of a few µs each (one reduction that checks for NaN and whether the
DAC saturates at all, DAC scale + round [+ clamp], noise, ADC round + clamp, gain + bias),
then Python and dispatch overhead of the same order — so the path keeps the per-call
Python work to a tuple unpack and one loop, and reads output noise as a window of whole
rows of the model's noise pool (one slice, no reshape).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .periphery import reread_saturated
from .tile import levels

# rows of one block of the fused inference path: ~4 MB of float outputs, which the
# element-wise periphery then passes over while they are still in (L2/L3) cache
_CHUNK_ELEMENTS = 1 << 20


def _first_column_has_nan(out: torch.Tensor) -> bool:
    """A NaN anywhere in an input row makes every output of that row NaN (NaN·0 is NaN,
    rounding and clamping keep it), so one output column is a complete check. On the CPU
    it is summed through a NumPy view: a torch reduction's set-up costs more than the
    whole sum (~20 µs per call in a 512×512 layer's forward)."""
    if out.device.type == "cpu":
        s = out.numpy()[:, 0].sum()
    else:
        s = out[:, 0].sum().item()
    return s != s


def _input_extremes(x2: torch.Tensor):
    """(min, max) of the inputs as Python floats: NaN iff an input is NaN (±inf is not NaN:
    it saturates a static DAC like any value beyond r), and whether any input reaches past
    the DAC range. One vectorized reduction over inputs still in cache (~0.03× of a
    512×512 layer's forward); it both checks for NaN and lets the DAC skip its clamp pass
    when nothing saturates."""
    lo, hi = torch.aminmax(x2)
    return lo.item(), hi.item()


class _Constants(NamedTuple):
    """What the fused path needs per call, cached per (DAC range, programmed state, pool)."""
    key: tuple
    r: float                     # DAC range
    n_dac: Optional[int]         # DAC levels per side (None: DAC off)
    alpha: float                 # GEMM output -> ADC code units (1 with the DAC on)
    dac_scale: Optional[torch.Tensor]  # inputs -> DAC codes, 0-dim (None: off / absmax)
    no_clip: float               # |x| up to this needs no DAC clamp (rounds to at most n_dac)
    noise: Optional[float]       # output-noise std in code units (None: off)
    n_adc: Optional[int]         # ADC levels per side (None: ADC off)
    tiles: tuple                 # ((first input, end, weights (rows, out), gain (out,)), ...)
    bias: Optional[torch.Tensor]
    pool_rows: Optional[torch.Tensor]  # the noise pool seen as (P // out, out)
    chunk: int                   # rows per block
    per_tile: bool               # "absmax_tile": a range per token and row tile
    bm_iters: Optional[int]      # re-reads of iterative bound management (None: off)


class FusedInference:
    """Mixin of AnalogLinear: `_inference_constants`, `_inference_forward`, `_inference_rows`."""

    def _inference_constants(self) -> _Constants:
        """Constants of the fused inference path. For a programmed layer they are cached
        until the DAC range r (compared by value), the programmed state, the noise pool or
        the compensation change; live (unprogrammed) weights are never cached. Periphery
        config edits after the first forward need `invalidate()`."""
        # plain-attribute reads only: a Module's __getattr__ (parameters, buffers) costs µs
        r = self._parameters["input_range"].item()
        pool = self._noise_pool
        key = (r, self._state_version, id(pool))
        fast = self._fast
        if fast is not None and fast.key == key:  # only programmed states are cached
            return fast
        c = self.config
        n_dac = levels(c.dac.bits) if c.dac.bits is not None else None
        unit = 1.0 / n_dac if n_dac is not None else 1.0 / r
        # "code units": ADC codes when the ADC is on, normalized outputs otherwise
        code = levels(c.adc.bits) / c.adc.bound if c.adc.bits is not None else 1.0
        if self.programmed:  # stored pre-scaled into code units (see `_scale_read`)
            wn, scale = self._w_read, self._out_scale
            # with the DAC on, the read weights hold the factor code / n_dac, so DAC codes ×
            # read weights are ADC codes: exactly 1 (the float quotient is 1 − 1 ulp for some
            # bit widths, and must not cost a pass per call)
            alpha = 1.0 if n_dac is not None else unit * code / self._w_read_scale
        else:
            (wn, scale), alpha = self._weight_view(), unit * code
        gain = scale * (r / code)  # (K, out): codes -> output units (w_max, r, compensation)
        tiles = tuple((lo, hi, w.contiguous(), gain[k].contiguous())
                      for k, (lo, hi, w) in enumerate(self._row_tiles(wn)))
        noise = c.adc.output_noise_std * code if c.adc.output_noise_std is not None else None
        n_adc = levels(c.adc.bits) if c.adc.bits is not None else None
        dac_scale = None  # a 0-dim tensor: a Python float would be converted on every call
        if n_dac is not None and c.dac.input_scaling == "static":
            dac_scale = torch.tensor(n_dac / r, dtype=wn.dtype, device=wn.device)
        # x·(n/r) is within a few ulp of exact, so |x| ≤ r·(1 + 0.25/n) gives codes below
        # n + 0.5, which round to at most n: the clamp would change nothing (a dtype too
        # coarse for that margin, e.g. bfloat16 at 8 bits, always clamps)
        no_clip = -math.inf
        if n_dac is not None and torch.finfo(wn.dtype).eps * n_dac < 0.05:
            no_clip = r * (1.0 + 0.25 / n_dac)
        pool_rows = None
        if noise is not None and pool is not None and pool.numel() >= self.out_features:
            pool_rows = pool[: pool.numel() // self.out_features * self.out_features].view(
                -1, self.out_features)
        chunk = max(64, _CHUNK_ELEMENTS // max(self.out_features, self.in_features))
        bias = None if self.bias is None else self.bias.detach()
        per_tile = n_dac is not None and c.dac.input_scaling == "absmax_tile" and len(tiles) > 1
        bm_iters = c.adc.bound_management_max_iters if c.adc.bound_management is not None else None
        const = _Constants(key, r, n_dac, alpha, dac_scale, no_clip, noise, n_adc, tiles, bias, pool_rows, chunk,
                           per_tile, bm_iters)
        self._fast = const if self.programmed else None
        return const

    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same pipeline as `forward`, fused for no-grad inference: the programmed
        weights are stored in ADC code units, and one `addcmul` applies gain and bias
        (and adds the partial sum of each further row tile). Each row tile is one GEMM on
        its slice of the inputs (no padded copies), and long inputs go in chunks of rows
        whose outputs stay in cache while the element-wise periphery runs over them.
        ±inf inputs saturate the DAC like any out-of-range input; NaN is an error."""
        const = self._inference_constants()
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        # a static DAC: NaN inputs checked up front (±inf saturate); DAC off or absmax:
        # ±inf can turn into NaN on the way (inf·0, inf/inf), so the outputs are checked
        static_dac = const.dac_scale is not None
        clip = True
        if static_dac:
            lo, hi = _input_extremes(x2)
            if hi != hi:  # NaN (the reduction propagates it to both ends)
                raise self._bad_input(x)
            clip = -lo > const.no_clip or hi > const.no_clip
        n_rows, chunk = x2.shape[0], const.chunk
        if n_rows <= chunk:
            out = self._inference_rows(x2, const, None, clip)
        else:
            out = x2.new_empty(n_rows, self.out_features)
            for i in range(0, n_rows, chunk):
                self._inference_rows(x2[i:i + chunk], const, out[i:i + chunk], clip)
        if not static_dac and _first_column_has_nan(out):
            raise self._bad_input(x)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)

    def _inference_rows(self, x2, const: _Constants, out, clip: bool = True):
        """`_inference_forward` for one block of rows; writes into `out` when given.
        `clip=False`: no input reaches past the DAC range, so its clamp is skipped."""
        _, r, n_dac, alpha, dac_scale, _, noise, n_adc, tiles, bias, pool_rows, _, per_tile, bm_iters = const
        r_tok = None
        if dac_scale is not None:
            xd = torch.mul(x2, dac_scale).round_()
            if clip:
                xd.clamp_(-n_dac, n_dac)
        elif n_dac is None or per_tile:
            xd = x2
        else:  # "absmax_layer" (or "absmax_tile" on one row tile): a range per input vector, undone after the ADC
            r_tok = x2.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12)
            xd = (x2 * (n_dac / r_tok)).round_()
        single = len(tiles) == 1
        for lo, hi, w, gain in tiles:
            xs = xd if single else xd[:, lo:hi]
            if per_tile:  # "absmax_tile": this tile's own range per token
                r_tok = xs.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12)
                xs = (xs * (n_dac / r_tok)).round_()
            y = torch.mm(xs, w)
            if alpha != 1.0:  # DAC off: the range r is applied here, not copied into weights
                y.mul_(alpha)
            if noise is not None:
                self._add_read_noise(y, noise, pool_rows)
            if n_adc is not None:
                y.round_().clamp_(-n_adc, n_adc)
                if bm_iters is not None:
                    self._manage_bounds(y, x2 if single else x2[:, lo:hi], w, const, r_tok, clip)
            if r_tok is not None:
                y.mul_(r_tok / r)  # gain holds the static r: swap it for each token's range
            if lo:
                out.addcmul_(y, gain)
            elif bias is not None:
                # in place on the GEMM's own output: no fresh (cold) output block
                out = torch.addcmul(bias, y, gain, out=y if out is None else out)
            else:
                out = y.mul_(gain) if out is None else torch.mul(y, gain, out=out)
        return out

    def _add_read_noise(self, y, noise: float, pool_rows) -> None:
        """Output noise of std `noise` (code units) onto y in place: a window of whole rows of
        the noise pool at a random offset, or fresh seeded draws."""
        rows = y.shape[0]
        if pool_rows is not None and rows <= pool_rows.shape[0]:
            at = self._offset_rng.randrange(pool_rows.shape[0] - rows + 1)
            y.add_(pool_rows[at:at + rows], alpha=noise)
        else:
            y.add_(torch.randn(y.shape, generator=self._generator, dtype=y.dtype, device=y.device), alpha=noise)

    def _manage_bounds(self, y, xs, w, const: _Constants, r_tok, clip: bool) -> None:
        """Iterative bound management of one tile's ADC codes y (rows, out), in place: the
        tokens with an output at full scale are read again with their inputs xs halved
        (`periphery.reread_saturated`). One reduction when nothing is at full scale."""
        n_adc, n_dac = const.n_adc, const.n_dac
        lo, hi = torch.aminmax(y)
        if -lo.item() < n_adc and hi.item() < n_adc:
            return

        def read(rows, m):
            x = xs[rows]
            if n_dac is None:
                x = x / m
            elif r_tok is None:  # static range r: the DAC clamps what still exceeds r·m
                x = x.mul_(const.dac_scale / m).round_()
                if clip:
                    x.clamp_(-n_dac, n_dac)
            else:  # x / (r·m) first: the token's largest input halves to exactly n/2 (as in DacSTE)
                x = x.div_(r_tok[rows] * m).mul_(n_dac).round_()
            c = torch.mm(x, w)
            if const.alpha != 1.0:
                c.mul_(const.alpha)
            if const.noise is not None:
                self._add_read_noise(c, const.noise, const.pool_rows)
            return c.round_().clamp_(-n_adc, n_adc)

        reread_saturated(y, n_adc - 0.5, self.col_sizes, const.bm_iters, read)
