"""Structured Optimal Brain Surgeon for crossbar rows: which inputs the others can replace.

Removing input row j of a matrix W (out, in) loses Σ_i W_ij x_j from its outputs. If the
kept rows may be refit afterwards (`reconstruct`), what matters is not how much row j
contributes but how much of that contribution the *other* rows cannot reproduce. With the
calibration frames' Gram matrix H = Σ_f x̃_f x̃_fᵀ (x̃ = [x; 1], so the bias can absorb a
mean; frames weighted 1/‖y_f‖² as in `reconstruct`), the least-squares error of removing
row j and refitting the rest is (Hassibi & Stork 1993, for a whole row of W):

    ε_j = Σ_i W_ij² / [H⁻¹]_jj

and after removing j, W and H⁻¹ follow in closed form (W ← W − W[:, j] H⁻¹[j, :] / H⁻¹_jj,
H⁻¹ ← H⁻¹ − H⁻¹[:, j] H⁻¹[j, :] / H⁻¹_jj). `greedy_row_order` removes rows one at a time
by least ε (as OBC / ZipLM do for structured pruning), so rows whose inputs are redundant
with others go first even when their weights and MAC contributions are large.
"""
from __future__ import annotations

from typing import Optional

import torch


def greedy_row_order(weight: torch.Tensor, gram: torch.Tensor, count: Optional[int] = None,
                     damping: float = 0.01, has_bias: bool = True) -> torch.Tensor:
    """Scores (in,) for removing `count` rows of `weight` (out, in) greedily by least
    least-squares error given `gram` ((in + 1)², last index the constant input; see
    module doc): removed rows score their removal step (0 = first), kept rows `count`
    and more — the lowest `count` scores are the greedy set. `count` None = all rows but one.
    `has_bias`: the bias is refit with the kept rows (the constant input takes part; its
    value does not change the order). `damping` × mean diagonal is added to the Gram
    diagonal (as `reconstruct`'s ridge). Rows already masked (all-zero weights) cost
    nothing and go first."""
    out, n = weight.shape
    if gram.shape != (n + 1, n + 1):
        raise ValueError(f"obs: Gram matrix of shape {tuple(gram.shape)} does not fit a weight "
                         f"with {n} inputs (expected ({n + 1}, {n + 1}): inputs and a constant)")
    count = n - 1 if count is None else int(count)
    if not 0 <= count < n:
        raise ValueError(f"obs: can remove 0 to {n - 1} of {n} rows, got {count}")
    w = weight.detach().double()
    h = gram.double()
    if has_bias:  # the constant input: only its Gram entries matter, not the bias value
        w = torch.cat([w, w.new_zeros(out, 1)], dim=1)
    else:
        h = h[:n, :n]
    lam = damping * float(h.diagonal().mean())
    hinv = torch.linalg.inv(h + lam * torch.eye(h.shape[0], dtype=torch.float64, device=h.device))
    alive = torch.ones(n, dtype=torch.bool, device=w.device)
    scores = torch.full((n,), float(count), dtype=torch.float64, device=w.device)
    def errors() -> torch.Tensor:  # ε_j of every row at the current W, H⁻¹
        return (w[:, :n] * w[:, :n]).sum(0) / hinv.diagonal()[:n].clamp_min(1e-300)

    for step in range(count):
        err = errors().masked_fill_(~alive, float("inf"))
        j = int(err.argmin())
        col = hinv[:, j].clone()  # H⁻¹ is symmetric: row j = column j
        d = float(col[j])
        w.addr_(w[:, j].clone(), col, alpha=-1.0 / d)  # rank-1 updates in place
        hinv.addr_(col, col, alpha=-1.0 / d)
        w[:, j] = 0.0
        alive[j] = False
        scores[j] = step
    # kept rows: above every removed one, ordered by their error at the end (ties: stable)
    if count:
        rest = errors()
        scores[alive] = count + rest[alive] / (1 + rest[alive].max())
    return scores
