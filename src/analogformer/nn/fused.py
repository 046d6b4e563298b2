"""The fused no-grad inference path of a programmed AnalogLinear (a mixin).

Same pipeline as `AnalogLinear.forward` — DAC, per-tile GEMM, output noise, ADC, gain,
partial sums, bias — with the programmed weights stored pre-scaled in ADC code units, the
periphery constants cached per programmed state, one GEMM per row tile on its slice of the
inputs, and long inputs processed in row blocks whose outputs stay in cache while the
element-wise passes run over them.
"""
from __future__ import annotations

import torch

from ..tile import _levels

# rows of one block of the fused inference path: ~4 MB of float outputs, which the
# element-wise periphery then passes over while they are still in (L2/L3) cache
_CHUNK_ELEMENTS = 1 << 20


def _has_nan(v: torch.Tensor) -> bool:
    s = v.sum().item()
    return s != s


class FusedInference:
    """Mixin of AnalogLinear: `_inference_constants`, `_inference_forward`, `_inference_rows`."""

    def _inference_constants(self):
        """Scalars and tensors of the fused inference path. For a programmed layer they
        are cached until the DAC range r (compared by value), the programmed state or the
        compensation change; live (unprogrammed) weights are never cached. Periphery
        config edits after the first forward need `invalidate()`."""
        r = self.input_range.item()
        key = (r, self._state_version)
        if self._fast is not None and self._fast[0] == key and self.programmed:
            return self._fast
        c = self.config
        n_dac = _levels(c.dac.bits) if c.dac.bits is not None else None
        unit = 1.0 / n_dac if n_dac is not None else 1.0 / r
        # "code units": ADC codes when the ADC is on, normalized outputs otherwise
        code = _levels(c.adc.bits) / c.adc.bound if c.adc.bits is not None else 1.0
        if self.programmed:  # stored pre-scaled into code units (see `_scale_read`)
            wn, scale, alpha = self._w_read, self._out_scale, unit * code / self._w_read_scale
        else:
            (wn, scale), alpha = self._weight_view(), unit * code
        gain = scale * (r / code)  # (K, out): codes -> output units (w_max, r, compensation)
        noise = c.adc.output_noise_std * code if c.adc.output_noise_std is not None else None
        n_adc = _levels(c.adc.bits) if c.adc.bits is not None else None
        tiles = self._row_tiles(wn)
        dac_scale = None if n_dac is None or c.dac.input_scaling == "absmax" else n_dac / r
        chunk = max(64, _CHUNK_ELEMENTS // max(self.out_features, self.in_features))
        self._fast = (key, r, n_dac, dac_scale, alpha, noise, n_adc, tiles, gain, chunk)
        return self._fast

    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same pipeline as `forward`, fused for no-grad inference: the programmed
        weights are stored in ADC code units, the DAC clamp runs only when an input
        rounding is in place, and one `addcmul` applies gain and bias (and adds the
        partial sum of each further row tile). Each row tile is one GEMM on its slice of
        the inputs (no padded copies), and long inputs go in chunks of rows whose
        outputs stay in cache while the element-wise periphery runs over them. ±inf
        inputs saturate the DAC like any out-of-range input; NaN is an error."""
        const = self._inference_constants()
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        n_rows, chunk = x2.shape[0], const[-1]
        if n_rows <= chunk:
            out = self._inference_rows(x2, const, None)
        else:
            out = x2.new_empty(n_rows, self.out_features)
            for i in range(0, n_rows, chunk):
                self._inference_rows(x2[i:i + chunk], const, out[i:i + chunk])
        # a NaN anywhere in an input row makes every output of that row NaN (NaN·0 is NaN,
        # rounding and clamping keep it), so one output column is a complete check
        if _has_nan(out[:, 0]):
            raise self._bad_input(x)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)

    def _inference_rows(self, x2, const, out):
        """`_inference_forward` for one block of rows; writes into `out` when given."""
        _, r, n_dac, dac_scale, alpha, noise_beta, n_adc, tiles, gain, _ = const
        r_tok = None
        if dac_scale is not None:
            xd = (x2 * dac_scale).round_().clamp_(-n_dac, n_dac)
        elif n_dac is None:
            xd = x2
        else:  # "absmax": a range per input vector, undone after the ADC
            r_tok = x2.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12)
            xd = (x2 * (n_dac / r_tok)).round_()
        pool, bias, single = self._noise_pool, self.bias, len(tiles) == 1
        for t, (lo, hi, w) in enumerate(tiles):
            y = torch.mm(xd if single else xd[:, lo:hi], w)
            if alpha != 1.0:
                y.mul_(alpha)
            if noise_beta is not None:
                n = y.numel()
                if pool is not None and n <= pool.numel():
                    at = self._offset_rng.randrange(pool.numel() - n + 1)
                    y.add_(pool[at:at + n].view(y.shape), alpha=noise_beta)
                else:
                    y.add_(torch.randn(y.shape, generator=self._generator, dtype=y.dtype),
                           alpha=noise_beta)
            if n_adc is not None:
                y.round_().clamp_(-n_adc, n_adc)
            if r_tok is not None:
                y.mul_(r_tok / r)  # gain holds the static r: swap it for each token's range
            if t:
                out.addcmul_(y, gain[t])
            elif bias is not None:
                out = torch.addcmul(bias, y, gain[0], out=out) if out is not None \
                    else torch.addcmul(bias, y, gain[0])
            else:
                out = torch.mul(y, gain[0], out=out) if out is not None else y.mul_(gain[0])
        return out
