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

from typing import List, Optional, Sequence, Tuple

import torch


class GreedyRows:
    """The greedy OBS removal of rows of one matrix `weight` (out, in) given `gram`
    ((in + 1)², last index the constant input; see module doc), one row at a time:
    `peek()` is the cheapest row now and its error ε, `remove()` takes it out and updates W
    and H⁻¹ in closed form. `has_bias`: the bias is refit with the kept rows (the constant
    input takes part; its value does not change the order). `damping` × mean diagonal is
    added to the Gram diagonal (as `reconstruct`'s ridge). Rows already masked (all-zero
    weights) cost nothing and go first. `scale` multiplies the reported errors (e.g.
    1 / frames, to compare matrices)."""

    def __init__(self, weight: torch.Tensor, gram: torch.Tensor, damping: float = 0.01,
                 has_bias: bool = True, scale: float = 1.0):
        out, n = weight.shape
        if gram.shape != (n + 1, n + 1):
            raise ValueError(f"obs: Gram matrix of shape {tuple(gram.shape)} does not fit a weight "
                             f"with {n} inputs (expected ({n + 1}, {n + 1}): inputs and a constant)")
        w = weight.detach().double()
        h = gram.double()
        if has_bias:  # the constant input: only its Gram entries matter, not the bias value
            w = torch.cat([w, w.new_zeros(out, 1)], dim=1)
        else:
            h = h[:n, :n]
        lam = damping * float(h.diagonal().mean())
        self.w, self.n, self.scale = w, n, float(scale)
        self.hinv = torch.linalg.inv(h + lam * torch.eye(h.shape[0], dtype=torch.float64, device=h.device))
        self.alive = torch.ones(n, dtype=torch.bool, device=w.device)
        self.order: List[int] = []  # rows in removal order
        self._next = None

    @property
    def room(self) -> int:
        """How many more rows may go (one always stays)."""
        return self.n - 1 - len(self.order)

    def errors(self) -> torch.Tensor:
        """ε_j of every row at the current W, H⁻¹ (removed rows included)."""
        n = self.n
        return (self.w[:, :n] * self.w[:, :n]).sum(0) / self.hinv.diagonal()[:n].clamp_min(1e-300)

    def peek(self) -> Tuple[int, float]:
        """(row, scaled error) of the next removal."""
        if self._next is None:
            if self.room <= 0:
                raise ValueError(f"obs: can remove at most {self.n - 1} of {self.n} rows")
            err = self.errors().masked_fill_(~self.alive, float("inf"))
            j = int(err.argmin())
            self._next = (j, float(err[j]) * self.scale)
        return self._next

    def remove(self) -> float:
        """Remove the row `peek()` names; returns its scaled error."""
        j, e = self.peek()
        col = self.hinv[:, j].clone()  # H⁻¹ is symmetric: row j = column j
        d = float(col[j])
        self.w.addr_(self.w[:, j].clone(), col, alpha=-1.0 / d)  # rank-1 updates in place
        self.hinv.addr_(col, col, alpha=-1.0 / d)
        self.w[:, j] = 0.0
        self.alive[j] = False
        self.order.append(j)
        self._next = None
        return e

    def scores(self) -> torch.Tensor:
        """(in,) scores: removed rows their removal step (0 = first), kept rows above every
        removed one, ordered by their error now (ties: stable)."""
        count = len(self.order)
        scores = torch.full((self.n,), float(count), dtype=torch.float64, device=self.w.device)
        if count:
            scores[self.order] = torch.arange(count, dtype=torch.float64, device=self.w.device)
            rest = self.errors()
            scores[self.alive] = count + rest[self.alive] / (1 + rest[self.alive].max())
        return scores


def greedy_row_order(weight: torch.Tensor, gram: torch.Tensor, count: Optional[int] = None,
                     damping: float = 0.01, has_bias: bool = True,
                     return_errors: bool = False):
    """Scores (in,) for removing `count` rows of `weight` (out, in) greedily by least
    least-squares error (`GreedyRows`): removed rows score their removal step (0 = first),
    kept rows `count` and more — the lowest `count` scores are the greedy set. `count`
    None = all rows but one. `return_errors`: also return the (count,) errors ε of the rows
    as they were removed (step k: the increase of the least-squares error by the k-th
    removal, in the Gram's units)."""
    n = weight.shape[1]
    count = n - 1 if count is None else int(count)
    if not 0 <= count < n:
        raise ValueError(f"obs: can remove 0 to {n - 1} of {n} rows, got {count}")
    g = GreedyRows(weight, gram, damping, has_bias)
    errors = torch.tensor([g.remove() for _ in range(count)], dtype=torch.float64)
    return (g.scores(), errors) if return_errors else g.scores()


def remove_globally(matrices: Sequence[GreedyRows], total: int) -> List[int]:
    """Remove `total` rows from `matrices` together (scope "global" of criterion "obs"),
    one at a time from the matrix whose next removal is cheapest — its error taken as the
    running maximum of that matrix's errors so far, so a matrix always loses a prefix of its
    own greedy order, as if the `total` cheapest of the running-maximum error sequences
    were taken (ties: the earlier matrix). The errors must be comparable across matrices
    (`criteria` scales them to the mean relative squared output error per calibration
    frame). Costs `total` greedy steps, as many as removing them matrix by matrix.
    Returns the rows each matrix lost."""
    room = sum(g.room for g in matrices)
    if not 0 <= total <= room:
        raise ValueError(f"obs: cannot remove {total} rows; the matrices allow {room} in all")
    level = [0.0] * len(matrices)  # running maximum of each matrix's removal errors
    counts = [0] * len(matrices)
    for _ in range(total):
        keys = [max(level[i], g.peek()[1]) if g.room else float("inf")
                for i, g in enumerate(matrices)]
        i = min(range(len(keys)), key=keys.__getitem__)
        level[i] = keys[i]
        matrices[i].remove()
        counts[i] += 1
    return counts
