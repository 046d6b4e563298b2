"""MAC-contribution analysis of seed 000 (ch. 3 §2).

For one analog matrix W (out × in, nn.Linear orientation) and input frames x_f (one frame
= one token's input vector), the crossbar computes y_f = W x_f. Seed 000 defines

    Δ_ij = Σ_f |w_ij · x_jf / y_if|

the fraction of output i's MAC that the product w_ij·x_jf makes up, summed over frames.
Choices made here (documented because the seed leaves them open):

* y is the crossbar MAC **without bias** (the bias is added digitally after the ADC) and is
  recomputed from the stored weights, so analog noise or quantization never enters Δ.
* |y_if| < eps is clamped to eps (a cancelling MAC would otherwise divide by zero).
* Padding tokens are not frames: `calibrate` drops them with the batch's attention mask.
* A module used several times per forward (ALBERT's shared layer) accumulates all uses.

Row scores (crossbar row = input j) r_j = Σ_i Δ_ij and column scores c_i = Σ_j Δ_ij are
streamed without materialising Δ:
    r_j = Σ_f |x_jf| · Σ_i |w_ij| / |y_if|,   c_i = Σ_f (Σ_j |w_ij||x_jf|) / |y_if|.
The full Δ (out × in) is kept only for the layers named in `keep_delta` (for Fig. 3.2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .prune_config import PruneConfig
from ..nn.targets import analog_matrices, find_targets, linear_weight


def _denominator(y: torch.Tensor, eps: float) -> torch.Tensor:
    return 1.0 / y.abs().clamp_min(eps)


def mac_delta(weight: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Δ (out × in) of seed 000 eq. 3.4 for weight (out, in) and frames x (F, in)."""
    inv = _denominator(x @ weight.t(), eps)          # (F, out)
    return weight.abs() * (inv.t() @ x.abs())          # (out, in)


def mac_unit_scores(weight: torch.Tensor, x: torch.Tensor,
                    eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row scores (in,), column scores (out,)) = (Σ_i Δ_ij, Σ_j Δ_ij), without Δ."""
    aw, ax = weight.abs(), x.abs()
    inv = _denominator(x @ weight.t(), eps)          # (F, out)
    rows = (ax * (inv @ aw)).sum(0)
    cols = (inv * (ax @ aw.t())).sum(0)
    return rows, cols


def product_elements(weight: torch.Tensor, x: torch.Tensor,
                     output_index: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Products w_ij·x_jf of output i for every frame: (positive sorted descending,
    negative sorted ascending), each (F, in) with non-matching entries set to 0 at the end.

    Seed 000 eq. 3.2: y_i = MAC⁺ + MAC⁻; the sorted curves show a few pairs dominate.
    """
    p = x * weight[output_index].unsqueeze(0)        # (F, in)
    pos = p.clamp_min(0).sort(dim=1, descending=True).values
    neg = p.clamp_max(0).sort(dim=1, descending=False).values
    return pos, neg


@dataclass
class LayerStats:
    """Accumulated calibration statistics of one analog matrix."""

    row_score: torch.Tensor            # (in,)  Σ_i Δ_ij
    col_score: torch.Tensor            # (out,) Σ_j Δ_ij
    sq_sum: torch.Tensor               # (in,)  Σ_f x_jf²
    frames: int = 0
    calls: int = 0
    delta: Optional[torch.Tensor] = None  # (out, in) only if requested
    # (in + 1, in + 1) Σ_f x̃x̃ᵀ/‖y_f‖², x̃ = [x; 1]: only for criterion "obs" (see obs.py)
    gram: Optional[torch.Tensor] = None

    @property
    def input_norm(self) -> torch.Tensor:
        """‖x_j‖₂ over all calibration frames (activation-aware criterion)."""
        return self.sq_sum.sqrt()


@dataclass
class MacStats:
    """Calibration statistics for a set of analog matrices, keyed by module name."""

    layers: Dict[str, LayerStats] = field(default_factory=dict)
    eps: float = 1e-6

    def __getitem__(self, name: str) -> LayerStats:
        if name not in self.layers:
            raise KeyError(f"MacStats: no statistics for {name!r}; calibrated modules: "
                           f"{sorted(self.layers)}")
        return self.layers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.layers

    def update(self, name: str, weight: torch.Tensor, x: torch.Tensor,
               keep_delta: bool = False, y: Optional[torch.Tensor] = None) -> None:
        """Add frames x (F, in) seen by matrix `name` with weight (out, in); with the
        matrix's outputs y (F, out) also the frame-weighted Gram matrix of [x; 1]."""
        if x.numel() == 0:
            return
        rows, cols = mac_unit_scores(weight, x, self.eps)
        st = self.layers.get(name)
        if st is None:
            st = LayerStats(torch.zeros_like(rows), torch.zeros_like(cols),
                            torch.zeros_like(rows))
            self.layers[name] = st
        st.row_score += rows
        st.col_score += cols
        st.sq_sum += (x * x).sum(0)
        st.frames += x.shape[0]
        st.calls += 1
        if keep_delta:
            d = mac_delta(weight, x, self.eps)
            st.delta = d if st.delta is None else st.delta + d
        if y is not None:
            xt = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            xt = xt * relative_frame_weights(y)
            g = xt.T @ xt
            st.gram = g if st.gram is None else st.gram.add_(g)


def relative_frame_weights(y: torch.Tensor) -> torch.Tensor:
    """(F, 1) weights 1/‖y_f‖² of the frames' squared errors, as square roots 1/‖y_f‖ to
    multiply frames by: the weighting shared by the OBS Gram (`update(..., y=)`) and the
    least-squares refit (`reconstruct`), so that the criterion and the refit minimise the
    same error."""
    return y.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal_()


def _resolve(model: nn.Module, modules) -> Dict[str, nn.Module]:
    if modules is None:
        return {t.name: t.module for t in analog_matrices(model)}
    if isinstance(modules, PruneConfig):
        return {n: t.module for n, t in find_targets(model, modules.blocks,
                                                     modules.exclude).items()}
    named = dict(model.named_modules())
    missing = [n for n in modules if n not in named]
    if missing:
        raise ValueError(f"calibrate: modules {missing} not found in {type(model).__name__}")
    return {n: named[n] for n in modules}


def _run(model: nn.Module, batch, state: dict) -> None:
    if isinstance(batch, dict):
        am = batch.get("attention_mask")
        state["mask"] = None if am is None else am.bool()
        model(**batch)
    else:
        state["mask"] = None
        model(batch)


def _frames(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(…, in) -> (F, in) without padding frames when the mask matches the leading dims."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask]
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable,
              modules: Union[None, PruneConfig, Sequence[str]] = None,
              keep_delta: Sequence[str] = (), eps: float = 1e-6,
              dtype: torch.dtype = torch.float64,
              max_batches: Optional[int] = None, gram: Optional[bool] = None) -> MacStats:
    """Run `batches` through `model` and accumulate MAC statistics with forward hooks.

    `batches`: dicts passed as `model(**batch)` (an "attention_mask" entry removes padding
    frames) or tensors passed as `model(batch)`. `modules`: None = every analog matrix,
    a PruneConfig = its target blocks, or a list of module names. `keep_delta` names the
    matrices whose full Δ is kept (memory out × in each). `gram` also accumulates each
    matrix's frame-weighted input Gram matrix (memory (in + 1)² × 8 B each; the "obs"
    criterion's statistics); None = when `modules` is a PruneConfig whose criterion needs it
    (`PruneConfig.needs_gram`).
    Computation in `dtype`.
    """
    if gram is None:
        gram = isinstance(modules, PruneConfig) and modules.needs_gram
    targets = _resolve(model, modules)
    keep = set(keep_delta)
    unknown = keep - set(targets)
    if unknown:
        raise ValueError(f"calibrate: keep_delta names {sorted(unknown)} are not calibrated "
                         f"modules")
    stats = MacStats(eps=eps)
    state: dict = {"mask": None}
    handles = []

    def make_hook(name: str, mod: nn.Module):
        def hook(_m, inputs, out):
            x = _frames(inputs[0].detach(), state["mask"]).to(dtype)
            y = _frames(out.detach(), state["mask"]).to(dtype) if gram else None
            stats.update(name, linear_weight(mod).detach().to(dtype), x, name in keep, y)
        return hook

    for name, mod in targets.items():
        handles.append(mod.register_forward_hook(make_hook(name, mod)))
    was_training = model.training
    model.eval()
    try:
        for k, batch in enumerate(batches):
            if max_batches is not None and k >= max_batches:
                break
            _run(model, batch, state)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


@torch.no_grad()
def capture_frames(model: nn.Module, batches: Iterable, module_name: str,
                   max_frames: int = 4096) -> torch.Tensor:
    """Input frames (F, in) of one module (padding removed), for Fig. 3.1-style plots."""
    mod = _resolve(model, [module_name])[module_name]
    got = []
    state: dict = {"mask": None}

    def hook(_m, inputs, _out):
        got.append(_frames(inputs[0].detach(), state["mask"]).float())

    h = mod.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            _run(model, batch, state)
            if sum(g.shape[0] for g in got) >= max_frames:
                break
    finally:
        h.remove()
        model.train(was_training)
    return torch.cat(got)[:max_frames]
