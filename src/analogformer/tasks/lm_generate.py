"""Text generation from prompts, greedy or sampled, with an explicit torch.Generator (no
global RNG): the same model state, prompt and seed give the same text, digital or on tiles.

A plain decoding loop over the model's KV cache (one forward of the prompt, then one per
new token), so an analog model's layers see exactly the inputs of the evaluation path.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..config import check_choice, check_positive, fail
from ..training.checkpoint import device_of

__all__ = ["GenerationConfig", "generate_text"]


@dataclass
class GenerationConfig:
    """Text generated from prompts at every time point of every condition (causal-LM tasks),
    on device instance 0; stored in `generations.jsonl`, shown side by side in the report."""

    prompts: Tuple[str, ...] = ("Once upon a time",)
    """The prompts, each continued on its own (no chat template)."""
    max_new_tokens: int = 32
    """Tokens generated per prompt (fewer when the model ends the text)."""
    mode: str = "greedy"
    """"greedy" (the most likely token each step) or "sampling" (from the temperature-scaled,
    top-k-restricted distribution)."""
    temperature: float = 0.8
    """Sampling temperature (mode: sampling)."""
    top_k: Optional[int] = 50
    """Sample among the k most likely tokens (mode: sampling); null = all."""
    seed: int = 0
    """Seed of the sampling draws; each (prompt, condition, time) draws from its own stream
    derived from it, and the forwards on tiles from the sweep seed."""
    stop_at_eos: bool = True
    """End a text at the tokenizer's end-of-sequence token."""
    conditions: Optional[Tuple[str, ...]] = None
    """The study conditions that generate (default: all of them)."""

    def __post_init__(self):
        if isinstance(self.prompts, str) or not self.prompts or not all(
                isinstance(p, str) and p.strip() for p in self.prompts):
            fail("GenerationConfig", "prompts", f"must be a non-empty list of non-empty strings, got {self.prompts!r}")
        self.prompts = tuple(self.prompts)
        check_positive(self, "max_new_tokens", integer=True)
        check_choice(self, "mode", {"greedy", "sampling"})
        check_positive(self, "temperature")
        check_positive(self, "top_k", allow_none=True, integer=True)
        if len(set(self.prompts)) != len(self.prompts):
            fail("GenerationConfig", "prompts", "lists a prompt twice; name each prompt once")
        if self.conditions is not None:
            if isinstance(self.conditions, str) or not self.conditions:
                fail("GenerationConfig", "conditions", f"must be a non-empty list of condition names or null, "
                                                       f"got {self.conditions!r}")
            self.conditions = tuple(self.conditions)


def _next_token(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> int:
    logits = logits.float()
    if cfg.mode == "greedy":
        return int(logits.argmax())
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.numel():
        kth = torch.topk(logits, cfg.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def generate_text(model: nn.Module, tokenizer, prompt: str, cfg: GenerationConfig,
                  seed: int = 0) -> Tuple[str, List[int]]:
    """(continuation text, its token ids) of `prompt`; sampling draws from a generator seeded
    with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    device = device_of(model)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    if ids.numel() == 0:
        raise ValueError(f"generation: the prompt {prompt!r} encodes to no token")
    eos = tokenizer.eos_token_id if cfg.stop_at_eos else None
    new: List[int] = []
    # the KV cache: `cache` in transformers >= 5.25, `past_key_values` before
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = None
    with torch.no_grad():
        step_ids = ids
        for _ in range(cfg.max_new_tokens):
            out = model(input_ids=step_ids, use_cache=True, **{key: cache})
            cache = out[key]
            logits = out.logits[0, -1]
            if not torch.isfinite(logits).all():
                model.train(was_training)
                raise FloatingPointError(f"generation from {prompt!r}: NaN or inf logits after {len(new)} tokens")
            tok = _next_token(logits, cfg, gen)
            if eos is not None and tok == eos:
                break
            new.append(tok)
            step_ids = torch.tensor([[tok]], device=device)
    model.train(was_training)
    return tokenizer.decode(new, skip_special_tokens=True), new
