"""Energy and area of the digital attention MACs by precision, and per-model MAC counts.

Unit: one bfloat16 fused multiply-add (bf16 FMA) = 1 energy, 1 area.

Anchor (SPEC §4.3, seed 001 Fig. 7B, 14 nm FinFET): an INT6 multiply-accumulate unit,
including an adder wide enough to accumulate the 64 terms of an attention head, uses
1/11.3 of the energy and 1/4.7 of the area of a bf16 FMA (a 91 % energy reduction).

Integer scaling (our choice, not from the seeds): energy and area of an INT-N MAC
∝ N², anchored at INT6. An N×N array multiplier has ~N² partial-product cells, which
dominate both switched capacitance and silicon area; the accumulator only grows linearly
in N, so N² slightly overstates the growth above INT6 (a conservative estimate for INT8
and INT10). INT8 -> (8/6)²/11.3 = 0.157 (6.4× cheaper than bf16), INT10 -> 0.246 (4.1×).

Floating point: bf16 is the unit. An FMA = a significand datapath (multiplier and adder,
like an integer MAC of the significand width: 8 bits for bf16, 24 for fp32) plus the
floating-point overhead (exponent logic, alignment shifter, normalisation, rounding).
The datapath share of a bf16 FMA is taken as an INT8 MAC under the N² rule (energy
0.157, area 0.378); the rest is overhead. Going to fp32 scales the datapath by (24/8)² and
the overhead linearly by 24/8: energy 0.157·9 + 0.843·3 = 3.94, area 0.378·9 + 0.622·3
= 5.27 bf16 FMAs (in line with the ~3–4× fp32/fp16 FMA energy ratio usually quoted).

MAC counts (batch 1, one sequence of S tokens, no KV cache, dense S×S attention even for
causal models — the hardware computes the full matrix):
  attention  = layers · 2 · S² · heads · head_dim        (Q·Kᵀ and P·V; = 2·L·S²·hidden
               for standard multi-head attention; GQA shares K/V heads but every query
               head still does its own S² · head_dim MACs)
  linear     = layers · S · (hidden·heads·head_dim + 2·hidden·kv_heads·head_dim
               + heads·head_dim·hidden + n_ffn·hidden·intermediate)
               (the analog matrices: Q, K, V, out, FFN; n_ffn = 3 for gated LLaMA MLPs,
               else 2). Embeddings, ALBERT's embedding projection, pooler and heads are
               not counted. ALBERT counts every application of its shared layer.
BERT-base gives an attention share of 2.7 % at S = 128 and 10 % at S = 512; seed 001
quotes "~5 % of the operations at S = 128", which presumably also counts softmax and
other activation work in the attention block — MACs alone are what is counted here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Union

INT6_ENERGY_PER_BF16_FMA = 1.0 / 11.3
INT6_AREA_PER_BF16_FMA = 1.0 / 4.7
ANCHOR_BITS = 6
BF16_SIGNIFICAND_BITS = 8
FP32_SIGNIFICAND_BITS = 24
DEFAULT_PRECISIONS = ("fp32", "bf16", "int10", "int8", "int6")


@dataclass(frozen=True)
class MacCost:
    """Energy and area of one MAC unit, in units of one bf16 FMA."""

    energy: float
    area: float


def _int_cost(bits: int) -> MacCost:
    k = (bits / ANCHOR_BITS) ** 2
    return MacCost(INT6_ENERGY_PER_BF16_FMA * k, INT6_AREA_PER_BF16_FMA * k)


def _float_cost(significand_bits: int) -> MacCost:
    datapath = _int_cost(BF16_SIGNIFICAND_BITS)
    r = significand_bits / BF16_SIGNIFICAND_BITS
    return MacCost(datapath.energy * r ** 2 + (1.0 - datapath.energy) * r,
                   datapath.area * r ** 2 + (1.0 - datapath.area) * r)


def mac_cost(precision: Union[str, int]) -> MacCost:
    """Cost of one attention MAC: "bf16", "fp32", "int<N>" (e.g. "int8") or an int N >= 2."""
    if isinstance(precision, int) and not isinstance(precision, bool):
        bits = precision
    elif isinstance(precision, str):
        p = precision.lower()
        if p in ("bf16", "bfloat16"):
            return MacCost(1.0, 1.0)
        if p in ("fp32", "float32"):
            return _float_cost(FP32_SIGNIFICAND_BITS)
        if not (p.startswith("int") and p[3:].isdigit()):
            raise ValueError(f"mac_cost: unknown precision {precision!r}; use 'bf16', 'fp32', "
                             "'int<N>' (e.g. 'int8') or an integer number of bits")
        bits = int(p[3:])
    else:
        raise ValueError(f"mac_cost: precision must be a str or int, got {precision!r}")
    if bits < 2:
        raise ValueError(f"mac_cost: integer precision needs >= 2 bits, got {bits}")
    return _int_cost(bits)


@dataclass(frozen=True)
class ModelDims:
    """The shapes that set the MAC counts of a transformer stack."""

    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    ffn_matrices: int  # 3 for gated (LLaMA) MLPs, 2 otherwise


def model_dims(config) -> ModelDims:
    """Read `ModelDims` from a HF config (BERT, ALBERT, DistilBERT, GPT-2, LLaMA-style)."""
    t = getattr(config, "model_type", None)
    if t == "distilbert":
        hidden, heads, layers, inter = config.dim, config.n_heads, config.n_layers, \
            config.hidden_dim
        kv, hd, n_ffn = heads, hidden // heads, 2
    elif t == "gpt2":
        hidden, heads, layers = config.n_embd, config.n_head, config.n_layer
        inter = config.n_inner if config.n_inner is not None else 4 * hidden
        kv, hd, n_ffn = heads, hidden // heads, 2
    elif t in ("bert", "albert"):
        hidden, heads, layers, inter = config.hidden_size, config.num_attention_heads, \
            config.num_hidden_layers, config.intermediate_size
        kv, hd, n_ffn = heads, hidden // heads, 2
    elif t in ("llama", "mistral", "qwen2"):
        hidden, heads, layers, inter = config.hidden_size, config.num_attention_heads, \
            config.num_hidden_layers, config.intermediate_size
        kv = config.num_key_value_heads if config.num_key_value_heads is not None else heads
        hd = getattr(config, "head_dim", None) or hidden // heads
        n_ffn = 3
    else:
        raise ValueError(f"model_dims: unsupported model_type {t!r}; supported: bert, albert, "
                         "distilbert, gpt2, llama (and mistral, qwen2)")
    return ModelDims(t, int(layers), int(hidden), int(heads), int(kv), int(hd), int(inter),
                     n_ffn)


def attention_macs(dims: ModelDims, seq_len: int) -> int:
    """MACs of Q·Kᵀ plus P·V over all layers for one sequence of `seq_len` tokens."""
    _check_seq_len(seq_len)
    return dims.layers * 2 * seq_len ** 2 * dims.heads * dims.head_dim


def linear_macs(dims: ModelDims, seq_len: int) -> int:
    """MACs of the analog matrices (Q, K, V, out, FFN) over all layers for one sequence."""
    _check_seq_len(seq_len)
    q = dims.heads * dims.head_dim
    kv = dims.kv_heads * dims.head_dim
    per_token = dims.hidden * (q + 2 * kv) + q * dims.hidden \
        + dims.ffn_matrices * dims.hidden * dims.intermediate
    return dims.layers * seq_len * per_token


def _check_seq_len(seq_len) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")


def attention_energy_table(config, seq_lens: Iterable[int] = (128, 512),
                           precisions: Sequence[Union[str, int]] = DEFAULT_PRECISIONS
                           ) -> List[Dict]:
    """One row per (sequence length, precision) for the model of `config`.

    Columns: model, seq_len, precision, attention_macs, linear_macs, attention_share
    (attention / all MACs), mac_energy and mac_area (per MAC, bf16-FMA units),
    attention_energy (attention_macs · mac_energy, bf16-FMA units) and
    energy_reduction_vs_bf16 (bf16 attention energy / this one).
    """
    dims = model_dims(config)
    rows = []
    for s in seq_lens:
        att, lin = attention_macs(dims, s), linear_macs(dims, s)
        for p in precisions:
            c = mac_cost(p)
            rows.append(dict(model=dims.family, seq_len=s, precision=str(p),
                             attention_macs=att, linear_macs=lin,
                             attention_share=att / (att + lin), mac_energy=c.energy,
                             mac_area=c.area, attention_energy=att * c.energy,
                             energy_reduction_vs_bf16=1.0 / c.energy))
    return rows


def render_markdown(rows: List[Dict]) -> str:
    """Markdown table of `attention_energy_table` rows."""
    head = ("| model | S | precision | attention MACs | linear MACs | attention share "
            "| energy/MAC | area/MAC | attention energy | × less than bf16 |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['seq_len']} | {r['precision']} | {r['attention_macs']:,} "
            f"| {r['linear_macs']:,} | {100 * r['attention_share']:.2f} % "
            f"| {r['mac_energy']:.4f} | {r['mac_area']:.4f} | {r['attention_energy']:.4g} "
            f"| {r['energy_reduction_vs_bf16']:.2f} |")
    return "\n".join(lines) + "\n"
