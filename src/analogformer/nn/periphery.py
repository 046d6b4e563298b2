"""The tile periphery of AnalogLinear (a mixin): DAC with its input scaling, output noise, ADC
with bound management, and the one-hot reads of drift compensation; plus the bound-management
loop that the fused inference path (`fused.py`) shares.

Input scaling, `DACConfig.input_scaling` (aihwkit's "noise management"), per token:

* "static": the layer's range r (a Parameter) for every row tile;
* "absmax_tile": row tile k gets r_tok,k = max |x[lo_k:hi_k]|, the token's inputs on that tile
  (aihwkit's AbsMax: each tile of a split layer manages its own inputs);
* "absmax_layer": one r_tok = max |x| over the whole input, shared by the row tiles (ours).

The DAC quantizes x·n/r, and the output of row tile k is multiplied by its r before the partial
sums are added, so a range comes as a 0-dim tensor (static), (N, 1) (absmax_layer) or (K, N, 1)
(absmax_tile). With the DAC off there is no scaling at all.

Bound management, `ADCConfig.bound_management = "iterative"` (aihwkit's): a token whose read of
a tile puts any output of that tile at the ADC's full-scale code is read again with its inputs
on that tile halved (range r·2^j), and the codes of that read, times 2^j, replace the first ones;
up to `bound_management_max_iters` times, while some output stays at full scale. What differs
from aihwkit, and why:

* per token and per physical tile (row tile × column tile): a token's result does not depend on
  the batch it came in (aihwkit's torch tile re-reads the whole batch when any output clips);
* saturation is an output at the full-scale code |code| = n: the periphery sees only codes, and
  a full-scale code cannot be told from a clipped value (aihwkit tests value > bound);
* the resolution stop of aihwkit (`max_bm_res`: factor > 0.25·DAC levels) is the explicit count
  `bound_management_max_iters` (4 = aihwkit's stop with a 7-bit DAC).

Each re-read is a new analog read: the halved inputs go through the DAC again, the same
(programmed, drifted) conductances, fresh output noise and the ADC.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

from ..device.conductance import group_mean
from .tile import DacSTE, adc_quantize, levels


def tile_absmax(x: torch.Tensor, row_sizes: Sequence[int]) -> torch.Tensor:
    """(N, in) inputs -> (K, N, 1): max |x| of each token's slice on each row tile (never 0)."""
    parts = torch.split(x.detach(), list(row_sizes), dim=1)
    return torch.stack([p.abs().amax(dim=1, keepdim=True) for p in parts]).clamp_min_(1e-12)


def full_scale(y: torch.Tensor, limit: float, col_sizes: Sequence[int]) -> torch.Tensor:
    """(N, C) bool: the (token, column tile) reads of y (N, out) with an output |y| ≥ limit.
    (A max per row, then one compare: a bool `any` over (N, out) costs ~10× more on the CPU.)"""
    a = y.abs()
    if len(col_sizes) == 1:
        return a.amax(dim=1, keepdim=True) >= limit
    return torch.stack([p.amax(dim=1) for p in a.split(list(col_sizes), dim=1)], dim=1) >= limit


def reread_saturated(y: torch.Tensor, limit: float, col_sizes: Sequence[int], max_iters: int,
                     read: Callable[[torch.Tensor, float], torch.Tensor],
                     on_replace: Optional[Callable[[torch.Tensor, torch.Tensor, float], None]] = None) -> torch.Tensor:
    """Iterative bound management of one row tile's ADC outputs y (N, out): every (token, column
    tile) with an output at |y| ≥ limit (the full-scale code) is read again as `read(rows, m)`
    — the tokens `rows` with their inputs divided by m = 2, 4, ... — whose outputs, times m,
    replace those of that column tile (`on_replace(rows, column mask, m)` is told which); until
    none is at full scale or `max_iters` re-reads. In place unless y needs a gradient; returns
    the result."""
    sat = full_scale(y.detach(), limit, col_sizes)
    rows = sat.any(dim=1).nonzero().squeeze(1)
    sat = sat[rows]
    grad = y.requires_grad
    one_col_tile = len(col_sizes) == 1  # then a saturated token re-reads all its outputs
    sizes = None if one_col_tile else torch.tensor(list(col_sizes), device=y.device)
    m = 1.0
    for i in range(max_iters):
        if rows.numel() == 0:
            break
        m *= 2.0
        c = read(rows, m)
        cols = sat if one_col_tile else sat.repeat_interleave(sizes, dim=1)
        new = (c * m if c.requires_grad else c.mul_(m)) if one_col_tile else torch.where(cols, c * m, y[rows])
        y = y.index_put((rows,), new) if grad or new.requires_grad else y.index_put_((rows,), new)
        if on_replace is not None:
            on_replace(rows, cols, m)
        if i + 1 < max_iters:
            still = full_scale(new.detach(), limit * m, col_sizes) & sat  # only the column tiles re-read
            keep = still.any(dim=1)
            rows, sat = rows[keep], still[keep]
    return y


class Periphery:
    """Mixin of AnalogLinear: DAC, output noise, ADC, bound management, compensation reads."""

    def _output_noise(self, shape, dtype, device) -> torch.Tensor:
        """N(0, 1) of `shape`: a window of the programmed pool at a random offset in
        programmed inference, fresh draws otherwise (training: global RNG)."""
        if self.training or self._generator is None:
            n = math.prod(shape)
            train_pool = self._train_noise_pool  # HWA training (HWAConfig.output_noise_pool)
            if self.training and train_pool is not None and n <= train_pool.numel():
                start = int(torch.randint(train_pool.numel() - n + 1, (1,)))
                return train_pool[start:start + n].view(shape).to(dtype)  # no copy when dtypes match
            return torch.randn(shape, dtype=dtype, device=device)
        return self._programmed_noise(shape, dtype, device)

    def _programmed_noise(self, shape, dtype=None, device=None) -> torch.Tensor:
        """N(0, 1) of `shape` for a programmed layer, whatever its train/eval mode: a
        window of the model's output-noise pool at a seeded random offset (the same
        source as the output noise of programmed inference), fresh seeded draws when the
        pool is off or too small."""
        pool, n = self._noise_pool, math.prod(shape)
        if pool is None or n > pool.numel():
            return torch.randn(shape, generator=self._generator, dtype=dtype, device=device)
        start = self._offset_rng.randrange(pool.numel() - n + 1)
        return pool[start:start + n].view(shape)

    def _dac(self, x: torch.Tensor):
        """-> (x_d, unit, r): the values driven onto the rows, the size of one unit of x_d
        in normalized input units (1 = full DAC range), and the range: the layer's parameter
        r, (N, 1) per token ("absmax_layer") or (K, N, 1) per row tile and token ("absmax_tile")."""
        dac = self.config.dac
        r = r_in = self.input_range
        if dac.bits is None:
            return x, 1.0 / r, r
        if dac.input_scaling == "absmax_layer":
            r = r_in = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min_(1e-12)
        elif dac.input_scaling == "absmax_tile":
            r = tile_absmax(x, self.row_sizes)  # each row tile's range, spread over its inputs:
            r_in = r[0] if len(self.row_sizes) == 1 else torch.cat(
                [rk.expand(-1, size) for rk, size in zip(r, self.row_sizes)], dim=1)
        n = levels(dac.bits)
        if torch.is_grad_enabled():
            return DacSTE.apply(x, r_in, float(n)), 1.0 / n, r
        return (x * (n / r_in)).round_().clamp_(-n, n), 1.0 / n, r

    def _dac_at(self, xs: torch.Tensor, r, m: float) -> torch.Tensor:
        """The DAC on inputs xs over the range r·m (a bound-management re-read); inputs / m
        with the DAC off."""
        bits = self.config.dac.bits
        if bits is None:
            return xs / m
        n = levels(bits)
        if torch.is_grad_enabled():
            return DacSTE.apply(xs, r * m, float(n))
        return (xs / (r * m)).mul_(n).round_().clamp_(-n, n)  # as DacSTE: x = r·m/2 gives exactly n/2

    def _adc(self, y: torch.Tensor, unit):
        """Output noise + ADC on per-tile outputs y (K, N, out) whose unit is `unit`
        normalized output units. -> (codes, size of one code in normalized units)."""
        adc = self.config.adc
        if adc.output_noise_std is not None:
            noise = self._output_noise(y.shape, y.dtype, y.device)
            if torch.is_grad_enabled():
                y = y + noise * (adc.output_noise_std / unit)
            else:
                y = y.add_(noise, alpha=float(adc.output_noise_std / unit))
        if adc.bits is None:
            return y, unit
        if torch.is_grad_enabled():
            return adc_quantize(y * unit, adc.bits, adc.bound), 1.0
        n = levels(adc.bits)
        return y.mul_(unit * n / adc.bound).round_().clamp_(-n, n), adc.bound / n

    def _bound_manage(self, x2, r, y, wn, unit, code_size) -> torch.Tensor:
        """Iterative bound management of the per-tile ADC outputs y (K, N, out) (one unit of y =
        `code_size` normalized units) of inputs x2 (N, in) with ranges r (see `_dac`), on the
        normalized tiled weights wn; re-reads go through `_dac_at` and `_adc` like the first."""
        adc = self.config.adc
        # the full-scale code in y's units (codes, or normalized values when training), half a
        # code below it so that rounding cannot hide it
        limit = adc.bound * (1.0 - 0.5 / levels(adc.bits)) / code_size
        out = []
        for k, (lo, hi, w) in enumerate(self._row_tiles(wn)):
            rk = r[k] if r.dim() == 3 else r

            def read(rows, m, lo=lo, hi=hi, w=w, rk=rk):
                xs = self._dac_at(x2[rows, lo:hi], rk[rows] if rk.dim() else rk, m)
                return self._adc(torch.mm(xs, w), unit)[0]

            out.append(reread_saturated(y[k], limit, self.col_sizes, adc.bound_management_max_iters, read))
        return torch.stack(out) if torch.is_grad_enabled() else y  # no grad: y[k] changed in place

    def _bound_manage_readout(self, x2, r, ys: List[torch.Tensor], noise, noise_std: float, n: int, wn):
        """Iterative bound management ahead of the fused training readout (`ReadoutSTE`, which adds
        the noise, quantizes and sums): ys are the row tiles' GEMM outputs in ADC code units
        (N, out), noise (K, N, out) N(0, 1) draws or None, wn the tiled weights in code units.
        A re-read's GEMM output and noise replace the saturated ones, and its factor m goes into
        the returned gain multiplier (K, N, out) (None: nothing saturated); ReadoutSTE then
        computes exactly the codes checked here. -> (ys, noise, multiplier)."""
        iters, mult = self.config.adc.bound_management_max_iters, None
        for k, (lo, hi, w) in enumerate(self._row_tiles(wn)):
            # the codes ReadoutSTE will compute, in a fresh tensor (quantized in place below)
            t = ys[k].detach().clone() if noise is None else torch.add(ys[k].detach(), noise[k], alpha=noise_std)
            lo_t, hi_t = torch.aminmax(t)
            if -lo_t.item() <= n - 0.5 and hi_t.item() <= n - 0.5:  # round(clamp(t)) = ±n iff |t| > n - 1/2
                continue
            if mult is None:
                mult = ys[0].new_ones((len(ys),) + ys[0].shape)
                noise = None if noise is None else noise.clone()  # a view of a shared pool: not in place
            rk, last = (r[k] if r.dim() == 3 else r), []

            def read(rows, m, lo=lo, hi=hi, w=w, rk=rk, last=last):
                yj = torch.mm(self._dac_at(x2[rows, lo:hi], rk[rows] if rk.dim() else rk, m), w)
                nj = None if noise is None else self._output_noise(yj.shape, yj.dtype, yj.device)
                last[:] = [yj, nj]
                tj = yj.detach().clone() if nj is None else torch.add(yj.detach(), nj, alpha=noise_std)
                return tj.clamp_(-n, n).round_()

            def replace(rows, cols, m, k=k, last=last):
                yj, nj = last
                if cols.shape[1] > 1:  # several column tiles: only the saturated ones change
                    yj = torch.where(cols, yj, ys[k][rows])
                    nj = None if nj is None else torch.where(cols, nj, noise[k][rows])
                    m = torch.where(cols, m, mult[k][rows])
                ys[k] = ys[k].index_put((rows,), yj)
                if nj is not None:
                    noise[k].index_put_((rows,), nj)
                mult[k].index_put_((rows,), m if torch.is_tensor(m) else
                                   torch.tensor(m, dtype=mult.dtype, device=mult.device))

            reread_saturated(t.clamp_(-n, n).round_(), n - 0.5, self.col_sizes, iters, read, replace)
        return ys, noise, mult

    def _one_hot_reads(self, w: torch.Tensor, m: float = 1.0) -> torch.Tensor:
        """ADC outputs (normalized units) of reading each row of the normalized weights w with
        a one-hot input of full scale / m (whose DAC code is round(n/m)): output noise + ADC."""
        c = self.config
        q = 1.0 / m if c.dac.bits is None else round(levels(c.dac.bits) / m) / levels(c.dac.bits)
        y = w * q
        if c.adc.output_noise_std is not None:
            y.add_(self._programmed_noise(y.shape), alpha=c.adc.output_noise_std)
        if c.adc.bits is not None:
            y = adc_quantize(y, c.adc.bits, c.adc.bound)
        return y

    @torch.no_grad()
    def _readout_level(self) -> torch.Tensor:
        """Mean |output| of one-hot reads of every row through the non-ideal MVM (output
        noise + ADC, bound management), per tile or per column -> (K, out). A one-hot input of
        full scale gives the DAC's largest code under every input scaling (its absmax is the
        input itself), so the reference does not depend on the scaling."""
        w = self.read_weights()  # one-hot input of full scale on row j reads row j
        y = self._one_hot_reads(w)
        adc = self.config.adc
        if adc.bound_management is not None:
            n = levels(adc.bits)
            for k in range(w.shape[0]):
                reread_saturated(y[k], adc.bound * (1.0 - 0.5 / n), self.col_sizes, adc.bound_management_max_iters,
                                 lambda rows, m, wk=w[k]: self._one_hot_reads(wk[rows], m))
        valid = self._valid_rows()
        per_col = (y.abs_() * valid).sum(1) / valid.sum(1)  # (K, out)
        if self.config.compensation.granularity == "column":
            return per_col
        return group_mean(per_col, self.col_sizes).contiguous()
