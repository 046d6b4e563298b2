"""Data-parallel training over `torch.distributed` processes (launched by `torchrun` or
`accelerate launch`): which process this is, its seeds, its share of a batch, the gradient sum
and the things only one process does (docs/distributed.md).

`finetune` trains data-parallel when the default process group holds more than one process.
Every process iterates the same loader (its own seeded generator gives every process the same
order; checked on every batch) and trains on its share of every batch: contiguous slices whose
sizes differ by at most one (`Ranks.shard`). Each process weights its gradients by its share of
the batch's examples and `Ranks.reduce_gradients` sums them over the processes, so the step is
the one a single process takes on the whole batch (up to float rounding, with the noise off):
`FinetuneConfig.batch_size` is the global batch whatever the number of processes. Every
trainable parameter is summed — weights, biases, DAC input ranges, output scales, learned
attention scales — so the optimizer step, and the clipping after it (a function of the weights
alone), leave every process with the same model.

The gradients are summed explicitly after the step's backward passes, not by wrapping the model
in `DistributedDataParallel`: DDP broadcasts buffers and counts backward passes in every forward,
while a step here may run several forwards and backwards (teacher, augmented copy, gradient
accumulation) and the dev evaluation runs in one process only.

Per process: the global torch RNG (HWA weight noise, ADC output-noise offsets, dropout) and the
augmentation generator are seeded with `Ranks.seed` — the seed itself on rank 0, so rank 0 draws
what a single process draws, and a seed derived from (seed, rank) on the others. Once, on rank 0:
dev evaluations (the value is sent to every process, so `keep_best` decides alike everywhere)
and training-state files (every process's RNG states are gathered into the one file).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List

import torch
import torch.distributed as dist
from torch import nn

from ..seeding import derive_seed

__all__ = ["Ranks", "examples"]

_BUCKET = 1 << 24  # elements per collective when gradients or weights are sent as one flat tensor


def _key_tensor(batch: dict) -> torch.Tensor:
    """The tensor that stands for a batch: input_ids, labels or pixel_values, else its first tensor."""
    for key in ("input_ids", "labels", "pixel_values"):
        if torch.is_tensor(batch.get(key)):
            return batch[key]
    return next(v for v in batch.values() if torch.is_tensor(v))


def examples(batch: dict) -> int:
    """The number of examples of a batch (its key tensor's leading dimension)."""
    return int(_key_tensor(batch).shape[0])


def _buckets(tensors: List[torch.Tensor]) -> Iterable[List[torch.Tensor]]:
    """Runs of tensors of one dtype and device, up to `_BUCKET` elements each (one collective each)."""
    run: List[torch.Tensor] = []
    for t in tensors:
        if run and ((t.dtype, t.device) != (run[0].dtype, run[0].device)
                    or sum(x.numel() for x in run) + t.numel() > _BUCKET):
            yield run
            run = []
        run.append(t)
    if run:
        yield run


@dataclass(frozen=True)
class Ranks:
    """This process (`rank`) among `size` data-parallel processes; collectives run on `device`
    (the model's: NCCL only takes CUDA tensors). `Ranks()` is a single process, in which every
    method is the identity or runs its function directly."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> "Ranks":
        """The processes of the initialised default process group (one when there is none)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls(device=torch.device(device))
        return cls(dist.get_rank(), dist.get_world_size(), torch.device(device))

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and scores (rank 0)."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """The seed of this process's draws: `seed` on rank 0 (what one process draws), a seed
        named by (seed, rank) elsewhere (so ranks of candidate seeds k and k+1 never collide)."""
        return int(seed) if self.rank == 0 else derive_seed(int(seed), "<data-parallel rank>", self.rank)

    # ------------------------------------------------------------ batches

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, stop) of this process's examples among `n`: contiguous slices, sizes differing by ≤ 1."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _too_small(self, n: int) -> ValueError:
        return ValueError(
            f"a batch of {n} example(s) cannot be shared by {self.size} processes (each needs at least one): "
            f"use a batch size of at least {self.size} (finetune.batch_size is the global batch, split over the "
            f"processes), a training set whose last batch keeps at least {self.size} examples (or a loader "
            f"with drop_last=True), or at most {n} process(es)")

    def check_loader(self, loader) -> None:
        """Refuse, before training, a `DataLoader` that yields a batch too small to share (checked
        again on every batch, for loaders of other kinds)."""
        if not self.parallel or not isinstance(loader, torch.utils.data.DataLoader) or loader.batch_size is None:
            return
        sizes = [loader.batch_size]
        if not loader.drop_last and not isinstance(loader.dataset, torch.utils.data.IterableDataset):
            last = len(loader.dataset) % loader.batch_size
            sizes += [last] if last else []
        if min(sizes) < self.size:
            raise self._too_small(min(sizes))

    def shard(self, batch: dict) -> dict:
        """This process's examples of `batch` (every tensor sliced along its first dimension),
        after checking that every process holds the same batch; `batch` itself in one process."""
        if not self.parallel:
            return batch
        n = examples(batch)
        if n < self.size:
            raise self._too_small(n)
        for k, v in batch.items():
            if torch.is_tensor(v) and (v.ndim == 0 or v.shape[0] != n):
                raise ValueError(f"batch[{k!r}] has shape {tuple(v.shape)}: to split a batch over {self.size} "
                                 f"processes every tensor must hold its {n} examples along the first dimension")
        self._check_same_batch(_key_tensor(batch))
        start, stop = self.bounds(n)
        return {k: v[start:stop] if torch.is_tensor(v) else v for k, v in batch.items()}

    def _check_same_batch(self, t: torch.Tensor) -> None:
        # a checksum of the batch: the sum of c and c² over the processes tells whether all c are equal
        c = zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy()) % (1 << 20)
        s = torch.tensor([c, c * c], dtype=torch.float64, device=self.device)
        dist.all_reduce(s)
        if float(s[1]) * self.size != float(s[0]) ** 2:
            raise ValueError(f"the {self.size} processes iterate different batches: every process must see the same "
                             "order, each trains on its share of every batch — give the loader its own seeded "
                             "generator (e.g. tasks.make_loader(..., seed=)), not the global torch RNG, which is "
                             "seeded per process")

    # ------------------------------------------------------------ reductions

    def average(self, value: torch.Tensor, share: float) -> torch.Tensor:
        """The batch's value of a per-process mean `value` over `share` of its examples: the sum
        over the processes of share·value (`value` itself in one process)."""
        if not self.parallel:
            return value
        t = (value.detach().double() * share).reshape(1).to(self.device)
        dist.all_reduce(t)
        return t[0].to(value.dtype)

    @torch.no_grad()
    def reduce_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes, in place (each process weighted
        its own by its share of the examples, so the sum is the whole batch's gradient). A
        parameter with a gradient on some processes only gets zeros on the others; one without a
        gradient anywhere keeps None (the optimizer skips it, as in one process)."""
        if not self.parallel:
            return
        params = list({id(p): p for p in params}.values())
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(flags)
        live = [p for p, f in zip(params, flags.tolist()) if f > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                raise ValueError("data-parallel training sums dense gradients; a sparse gradient (e.g. "
                                 "nn.Embedding(sparse=True)) is not supported: use sparse=False")
        for run in _buckets([p.grad for p in live]):
            flat = torch.cat([g.reshape(-1) for g in run])
            dist.all_reduce(flat)
            for g, part in zip(run, flat.split([g.numel() for g in run])):
                g.copy_(part.view_as(g))

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (as DDP does when it wraps a model):
        a model built or initialised per process starts the same everywhere."""
        if not self.parallel:
            return
        tensors = [t.data for t in {id(t): t for t in [*module.parameters(), *module.buffers()]}.values()]
        # bool buffers (e.g. the attention quantizers' `calibrated`) travel as bytes: not every backend sends bool
        for run in _buckets([t.view(torch.uint8) if t.dtype == torch.bool else t for t in tensors]):
            flat = torch.cat([t.reshape(-1) for t in run])
            dist.broadcast(flat, src=0)
            for t, part in zip(run, flat.split([t.numel() for t in run])):
                t.copy_(part.view_as(t))

    # ------------------------------------------------------------ once, on rank 0

    def on_main(self, fn: Callable[..., Any], *args) -> Any:
        """`fn(*args)` run on rank 0 only, its value given to every process (an error on rank 0
        is raised on every process, so none waits forever)."""
        if not self.parallel:
            return fn(*args)
        box: list = [None]
        if self.main:
            try:
                box = [("value", fn(*args))]
            except Exception as e:
                box = [("error", f"{type(e).__name__}: {e}")]
                dist.broadcast_object_list(box, src=0, device=self.device)
                raise
        dist.broadcast_object_list(box, src=0, device=self.device)
        kind, value = box[0]
        if kind == "error":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def gather(self, value: Any) -> List[Any]:
        """`value` of every process, in rank order (`[value]` in one process)."""
        if not self.parallel:
            return [value]
        out: List[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out
