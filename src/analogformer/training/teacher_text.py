"""Text the digital teacher writes itself, to distil a causal LM on (as IBM's analog foundation
models do): sequences sampled from the teacher, seeded, so the student learns the teacher's
distribution where the teacher puts its mass, with no training corpus at all.

    windows = teacher_text(digital, TeacherTextConfig(sequences=64, tokens=512, seed=0))
    loader = window_batches(windows, batch_size=4, seed=0)
    finetune(student, loader, FinetuneConfig(distill_weight=1.0, ...), teacher=digital)

Sampling runs with the KV cache, one token at a time for a batch of sequences, and draws only
from its own `torch.Generator`: the same config gives the same text, whatever the global RNG.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["TeacherTextConfig", "teacher_text", "window_batches"]


def _fail(name: str, msg: str) -> None:
    raise ValueError(f"TeacherTextConfig.{name}: {msg}")


@dataclass
class TeacherTextConfig:
    """Sampling text from the teacher to distil on."""

    sequences: int = 64
    """Sequences sampled (the training windows)."""
    tokens: int = 512
    """Tokens per sequence, the first one included."""
    temperature: float = 1.0
    """Softmax temperature of the sampling (1 = the teacher's own distribution)."""
    top_k: Optional[int] = None
    """Sample among the k most likely tokens only; None = the whole vocabulary."""
    batch_size: int = 8
    """Sequences sampled together."""
    seed: int = 0
    """Seed of the sampling generator (first tokens and every draw)."""

    def __post_init__(self):
        for name in ("sequences", "tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                _fail(name, f"must be an int >= 1, got {v!r}")
        if self.tokens < 2:
            _fail("tokens", f"must be >= 2 (a first token and at least one sampled), got {self.tokens!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
            _fail("temperature", f"must be a finite number > 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            _fail("top_k", f"must be an int >= 1 or null (whole vocabulary), got {k!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            _fail("seed", f"must be an int, got {self.seed!r}")


def _first_tokens(teacher: nn.Module, n: int, pool: Optional[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    if pool is not None:
        return pool[torch.randint(pool.numel(), (n,), generator=gen)]
    bos = getattr(teacher.config, "bos_token_id", None)
    if bos is not None:
        return torch.full((n,), int(bos), dtype=torch.long)
    return torch.randint(teacher.config.vocab_size, (n,), generator=gen)


@torch.no_grad()
def teacher_text(teacher: nn.Module, cfg: TeacherTextConfig,
                 first_tokens: Optional[Sequence[int] | torch.Tensor] = None) -> List[dict]:
    """`cfg.sequences` sequences of `cfg.tokens` tokens sampled from `teacher` (an HF causal LM):
    each a dict {"input_ids", "attention_mask", "labels"} of 1-D tensors (labels = input_ids).
    The first token of each is drawn uniformly from `first_tokens` (e.g. the tokens of real text,
    so first tokens follow its unigram distribution), else the model's BOS token, else uniform
    over the vocabulary."""
    if not isinstance(cfg, TeacherTextConfig):
        raise ValueError(f"teacher_text: cfg must be a TeacherTextConfig, got {type(cfg).__name__}")
    pool = None
    if first_tokens is not None:
        pool = torch.as_tensor(first_tokens, dtype=torch.long).flatten()
        if pool.numel() == 0:
            raise ValueError("teacher_text: first_tokens is empty; pass token ids or None (BOS / uniform)")
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    # the KV cache argument: `cache` in newer transformers, `past_key_values` before
    cache = "cache" if "cache" in inspect.signature(teacher.forward).parameters else "past_key_values"
    out: List[dict] = []
    try:
        for start in range(0, cfg.sequences, cfg.batch_size):
            n = min(cfg.batch_size, cfg.sequences - start)
            ids = _first_tokens(teacher, n, pool, gen).unsqueeze(1)
            step = teacher(input_ids=ids.to(device), use_cache=True)
            for _ in range(cfg.tokens - 1):
                logits = step.logits[:, -1].float().cpu() / cfg.temperature
                if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
                    kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
                ids = torch.cat([ids, nxt], dim=1)
                step = teacher(input_ids=nxt.to(device), use_cache=True, **{cache: getattr(step, cache)})
            for row in ids:
                out.append({"input_ids": row.clone(), "attention_mask": torch.ones_like(row), "labels": row.clone()})
    finally:
        teacher.train(was_training)
    return out


def _stack(items: List[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def window_batches(windows: List[dict], batch_size: int, seed: int) -> DataLoader:
    """Training batches over equal-length windows (e.g. `teacher_text`'s) in a seeded random order."""
    if not windows:
        raise ValueError("window_batches: no windows")
    return DataLoader(windows, batch_size=batch_size, shuffle=True, collate_fn=_stack,
                      generator=torch.Generator().manual_seed(seed))
