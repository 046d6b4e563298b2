"""INT-N fake-quantized attention matmuls (Q·Kᵀ and P·V) for Hugging Face models.

SPEC §1 / §4.3, seed 001 §3.2: the two attention matmuls stay digital and may run in
INT10 / INT8 / INT6 with a per-tensor symmetric scale; softmax stays full precision.

How the quantized path is forced
--------------------------------
transformers 5.x attention modules call ``ALL_ATTENTION_FUNCTIONS.get_interface(
config._attn_implementation, eager_attention_forward)``. `quantize_attention` registers
one function, ``"analogformer_int"``, with transformers' `AttentionInterface` (and the
`eager_mask` builder under the same name with `AttentionMaskInterface`, so the model
builds the additive float masks of the eager path), then sets
``config._attn_implementation = "analogformer_int"`` on every config the attention modules
read. The function reproduces the eager path step by step (scaling, additive mask,
softmax in float32, dropout on the probabilities when `module.training`, GQA key/value
repetition) and fake-quantizes the four operands q, k, p, v (p before dropout, so its
range is that of inference; the returned attention weights are the quantized,
dropped-out probabilities that enter P·V). There is no head_mask in
transformers 5.x (it was removed), so there is nothing to apply. `dequantize_attention`
restores the previous implementation (e.g. "sdpa") and removes the quantizers, which
restores the original outputs exactly.

Supported families (checked in tests with transformers 5.24): BERT (self- and
cross-attention), ALBERT, DistilBERT, GPT-2 (also with `reorder_and_upcast_attn`, whose
special path only exists under "eager"; here the operands are quantized in the model
dtype) and LLaMA-style decoders (GQA via `num_key_value_heads`). Attention modules are
found by class: any module whose class `forward` dispatches through
`ALL_ATTENTION_FUNCTIONS.get_interface` (the heuristic transformers itself uses). The
nn.Linear projections are not touched, so this composes with analog tiles in any order.
ALBERT shares one attention module across its layers, so it gets one set of scales.

Scales: one per attention module and operand (`scale` = clipping range r; step
r / (2^(bits-1) - 1)). `calibrate_attention` sets r from data (running max |x| or the mean
over batches of a per-batch percentile of |x|); in "learned" mode r is an nn.Parameter
initialised from calibration and trained with the LSQ straight-through gradient.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from .convert import ideal_state

ATTN_IMPLEMENTATION = "analogformer_int"
QUANTIZER_ATTR = "attn_quant"
OPERANDS = ("query", "key", "probs", "value")


@dataclass
class AttentionQuantConfig:
    """INT-N quantization of the attention matmuls (SPEC §4.3)."""

    bits: Optional[int] = 8
    """Integer bits of both operands of Q·Kᵀ and P·V (>= 2, e.g. 10, 8, 6); None = off."""
    scale_mode: str = "learned"
    """"calibrated" (a frozen buffer) or "learned" (an nn.Parameter with the LSQ gradient,
    initialised from calibration)."""
    calibration: str = "max"
    """"max" (running max |x| over the calibration batches) or "percentile" (mean over the
    batches of the `percentile`-th percentile of |x|)."""
    percentile: float = 99.99
    """In (0, 100]; used only when `calibration` is "percentile"."""

    def __post_init__(self):
        name = type(self).__name__
        b = self.bits
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 2):
            raise ValueError(f"{name}.bits: must be an integer >= 2 (e.g. 10, 8, 6) or None "
                             f"for off, got {b!r}")
        if self.scale_mode not in ("calibrated", "learned"):
            raise ValueError(f"{name}.scale_mode: must be 'calibrated' or 'learned', "
                             f"got {self.scale_mode!r}")
        if self.calibration not in ("max", "percentile"):
            raise ValueError(f"{name}.calibration: must be 'max' or 'percentile', "
                             f"got {self.calibration!r}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise ValueError(f"{name}.percentile: must be a number in (0, 100], got {p!r}")


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric INT-`bits` fake quantization over [-scale, scale].

    Values are clipped to the range and rounded to one of 2^(bits-1)-1 levels per side.
    Gradients (LSQ, Esser et al. 2020): x gets 1 inside the range, 0 outside; `scale` gets
    (round(x/s) - x/s)/L inside and ±1 outside, s = scale/L the step, L the level count.
    """
    levels = 2 ** (bits - 1) - 1
    step = scale.clamp_min(torch.finfo(scale.dtype).tiny) / levels
    v = torch.clamp(x / step, -levels, levels)
    v = v + (torch.round(v) - v).detach()
    return v * step


class OperandQuantizer(nn.Module):
    """Per-tensor symmetric quantizer of one matmul operand, with its calibration state."""

    def __init__(self, cfg: AttentionQuantConfig, device=None):
        super().__init__()
        self.bits = cfg.bits
        self.calibration = cfg.calibration
        self.percentile = float(cfg.percentile)
        self.observing = False  # transient: set only inside calibrate_attention
        scale = torch.zeros((), device=device)
        if cfg.scale_mode == "learned":
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("observed", torch.zeros((), device=device))
        self.register_buffer("n_batches", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=device))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, learned={isinstance(self.scale, nn.Parameter)}"

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        a = x.detach().abs().flatten().float()
        if self.calibration == "max":
            v = a.max()
            self.observed.copy_(torch.maximum(self.observed, v))
        else:
            k = max(1, min(a.numel(), int(round(self.percentile / 100.0 * a.numel()))))
            v = a.kthvalue(k).values
            n = self.n_batches.float()
            self.observed.copy_((self.observed * n + v) / (n + 1))
        self.n_batches += 1

    @torch.no_grad()
    def reset(self) -> None:
        self.observed.zero_()
        self.n_batches.zero_()

    @torch.no_grad()
    def freeze(self) -> None:
        if int(self.n_batches) == 0:
            raise RuntimeError("OperandQuantizer.freeze: no calibration data was seen; the "
                               "attention modules were not called by the calibration batches")
        self.scale.copy_(self.observed)
        self.calibrated.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not bool(self.calibrated):
            raise RuntimeError("attention quantizer has no scale yet: call "
                               "analogformer.nn.attention.calibrate_attention(model, batches) "
                               "after quantize_attention and before running the model")
        return fake_quantize(x, self.scale.to(x.dtype), self.bits)


class AttentionQuantizer(nn.Module):
    """The four operand quantizers of one attention module (stored on it as `attn_quant`)."""

    def __init__(self, cfg: AttentionQuantConfig, previous_implementation, device=None):
        super().__init__()
        self.cfg = cfg
        self.previous_implementation = previous_implementation
        for op in OPERANDS:
            self.add_module(op, OperandQuantizer(cfg, device=device))

    def operands(self) -> Dict[str, OperandQuantizer]:
        return {op: getattr(self, op) for op in OPERANDS}


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, S, D) -> (B, H_kv*n_rep, S, D), each kv head repeated for its query group."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def quantized_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                                scaling: Optional[float] = None, dropout: float = 0.0,
                                **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eager attention of transformers 5.x with INT-N operands (registered interface)."""
    for unsupported in ("softcap", "s_aux", "sinks"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"quantized attention: '{unsupported}' is not supported "
                                      f"(module {type(module).__name__})")
    quant = module._modules.get(QUANTIZER_ATTR)
    if quant is None:
        raise RuntimeError(f"{type(module).__name__} uses attn_implementation "
                           f"'{ATTN_IMPLEMENTATION}' but has no quantizer; call "
                           "quantize_attention(model, cfg) on the whole model")
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    key = _repeat_kv(key, n_rep)
    value = _repeat_kv(value, n_rep)

    scores = torch.matmul(quant.query(query), quant.key(key).transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    # P is quantized before dropout: its grid (and calibrated range) is that of the
    # inference-time probabilities; dropout's 1/(1-p) only rescales that grid
    probs = nn.functional.dropout(quant.probs(probs), p=dropout, training=module.training)
    out = torch.matmul(probs, quant.value(value))
    return out.transpose(1, 2).contiguous(), probs


def _register() -> None:
    # imported here: a model to quantize has loaded transformers; importing analogformer does not
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register(ATTN_IMPLEMENTATION, quantized_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


@functools.lru_cache(maxsize=None)
def _dispatches_attention_interface(cls: type) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS.get_interface" in src


def attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(qualified name, module) of every attention module that dispatches through
    transformers' AttentionInterface (BertSelfAttention, GPT2Attention, LlamaAttention...)."""
    return [(n, m) for n, m in model.named_modules()
            if _dispatches_attention_interface(type(m)) and "config" in vars(m)]


def _found_attention(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    found = attention_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__}: no Hugging Face attention module found (a "
                         "module whose forward dispatches through ALL_ATTENTION_FUNCTIONS). "
                         "Supported: BERT, ALBERT, DistilBERT, GPT-2 and LLaMA-style models of "
                         "transformers 5.x; pass the whole model, not a sub-module without "
                         "attention")
    return found


def _device_of(module: nn.Module):
    for p in module.parameters():
        return p.device
    return None


def quantize_attention(model: nn.Module, cfg: AttentionQuantConfig) -> nn.Module:
    """Quantize Q·Kᵀ and P·V of every attention module of `model` in place; returns it.

    `cfg.bits is None` switches quantization off (same as `dequantize_attention`). Call
    `calibrate_attention(model, batches)` next to set the scales. Calling it again
    replaces the quantizers (and their scales) with new ones for the new config.
    """
    if not isinstance(cfg, AttentionQuantConfig):
        raise TypeError(f"quantize_attention: cfg must be an AttentionQuantConfig, "
                        f"got {type(cfg).__name__}")
    found = _found_attention(model)
    if cfg.bits is None:
        return dequantize_attention(model)
    _register()
    # previous implementation per module, read before any config is switched (a config is
    # usually shared by all layers); a re-quantized module keeps its original one
    previous = []
    for _, m in found:
        old = m._modules.get(QUANTIZER_ATTR)
        previous.append(old.previous_implementation if old is not None
                        else m.config._attn_implementation)
    for (_, m), prev in zip(found, previous):
        m.add_module(QUANTIZER_ATTR, AttentionQuantizer(cfg, prev, device=_device_of(m)))
        m.config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def dequantize_attention(model: nn.Module) -> nn.Module:
    """Remove the quantizers and restore each config's previous attention implementation."""
    for _, m in _found_attention(model):
        quant = m._modules.get(QUANTIZER_ATTR)
        if quant is None:
            continue
        if m.config._attn_implementation == ATTN_IMPLEMENTATION:
            m.config._attn_implementation = quant.previous_implementation
        del m._modules[QUANTIZER_ATTR]
    return model


def attention_quantizers(model: nn.Module) -> Dict[str, AttentionQuantizer]:
    """{attention module name: its AttentionQuantizer} of a quantized model."""
    out = {}
    for name, m in attention_modules(model):
        quant = m._modules.get(QUANTIZER_ATTR)
        if quant is not None:
            out[name] = quant
    if not out:
        raise ValueError(f"{type(model).__name__} has no quantized attention: call "
                         "quantize_attention(model, cfg) first")
    return out


def attention_scales(model: nn.Module) -> Dict[str, Dict[str, float]]:
    """{attention module name: {operand: clipping range r}} (0.0 before calibration)."""
    return {name: {op: float(q.scale) for op, q in quant.operands().items()}
            for name, quant in attention_quantizers(model).items()}


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def calibrate_attention(model: nn.Module, batches: Iterable) -> Dict[str, Dict[str, float]]:
    """Set every attention scale from calibration data; returns `attention_scales(model)`.

    Each batch is passed as `model(**batch)` (dict), `model(*batch)` (tuple/list) or
    `model(batch)`. The model runs in eval mode (no dropout) with float operands while the
    statistics are collected, its analog layers in their ideal state (`nn.convert.ideal_state`:
    device and periphery noise do not widen the scales); the scales are then frozen (calibrated mode) or written into
    the learnable parameters as their initial value (learned mode). Re-calibrating
    starts the statistics afresh.
    """
    quants = attention_quantizers(model)
    operands = [q for quant in quants.values() for q in quant.operands().values()]
    was_training = model.training
    model.eval()
    try:
        for q in operands:
            q.reset()
            q.observing = True
        n = 0
        with ideal_state(model):  # the analog layers' noise must not widen the scales
            for batch in batches:
                _run(model, batch)
                n += 1
        if n == 0:
            raise ValueError("calibrate_attention: `batches` is empty; pass at least one batch")
    finally:
        for q in operands:
            q.observing = False
        model.train(was_training)
    for q in operands:
        q.freeze()
    return attention_scales(model)
