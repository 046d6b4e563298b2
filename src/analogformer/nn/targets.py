"""Which matrices are analog, which transformer block each belongs to, and FFN pairs.

A *block* is one of the four stationary matrices of a transformer layer (seed 000 ch. 2
§5): "in_proj" (Q/K/V), "out_proj" (attention output), "fc1" (first FFN matrix) and
"fc2" (second FFN matrix). Names are resolved from the fully-qualified module name so
BERT, ALBERT, DistilBERT, GPT-2 and LLaMA checkpoints work without per-model code.

Weights are handled in the nn.Linear orientation (out, in) everywhere: rows of the
crossbar are inputs = columns of that matrix. HF GPT-2 `Conv1D` stores (in, out); use
`linear_weight(module)` to get an (out, in) view of either kind.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn


def is_conv1d(module) -> bool:
    """HF GPT-2's `Conv1D` (weight stored (in, out)). Looked up among the loaded modules, not
    imported: a model holding one has loaded transformers, and importing analogformer (say, a
    CLI that only validates a config) does not pay for transformers."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return mod is not None and isinstance(module, mod.Conv1D)

BLOCKS = ("in_proj", "out_proj", "fc1", "fc2")

# Order matters: out_proj is tested before fc2 because BERT's attention output is also
# called "...attention.output.dense" while its FC2 is "...layer.N.output.dense".
BLOCK_PATTERNS: Tuple[Tuple[str, "re.Pattern[str]"], ...] = (
    ("in_proj", re.compile(r"(^|\.)(query|key|value|q_lin|k_lin|v_lin|c_attn|q_proj|k_proj|v_proj)$")),
    ("out_proj", re.compile(r"(attention\.output\.dense|attention\.dense|(^|\.)out_lin|attn\.c_proj|(^|\.)o_proj)$")),
    ("fc1", re.compile(r"(intermediate\.dense|ffn\.lin1|(^|\.)ffn|mlp\.c_fc|(^|\.)gate_proj|(^|\.)up_proj)$")),
    ("fc2", re.compile(r"(output\.dense|ffn\.lin2|(^|\.)ffn_output|mlp\.c_proj|(^|\.)down_proj)$")),
)

# Output heads, poolers and embedding projections stay digital by default.
DEFAULT_EXCLUDE: Tuple[str, ...] = (
    r"(^|\.)(classifier|pre_classifier|lm_head|pooler|qa_outputs|score|cls|predictions"
    r"|vocab_transform|vocab_projector|sop_classifier)(\.|$)",
    r"embed",
)

# FC2 name suffix -> FC1 sibling suffixes (the FFN intermediate dimension they share).
_FFN_SUFFIXES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("output.dense", ("intermediate.dense",)),
    ("ffn_output", ("ffn",)),
    ("ffn.lin2", ("ffn.lin1",)),
    ("mlp.c_proj", ("mlp.c_fc",)),
    ("down_proj", ("gate_proj", "up_proj")),
)

# Config attribute holding the FFN intermediate size, per model type.
FFN_SIZE_ATTRS = ("intermediate_size", "hidden_dim", "n_inner")

LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|albert_layers)\.(\d+)\.")


def is_analog_matrix(module: nn.Module) -> bool:
    """nn.Linear (including AnalogLinear subclasses) or HF Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) tensor; a view for Conv1D, so in-place ops reach it."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"linear_weight: {type(module).__name__} is neither nn.Linear nor Conv1D")


def block_of(name: str) -> Optional[str]:
    """Block ("in_proj", "out_proj", "fc1", "fc2") of a module name, or None."""
    for block, pat in BLOCK_PATTERNS:
        if pat.search(name):
            return block
    return None


def layer_index(name: str) -> Optional[int]:
    """Transformer layer index parsed from a module name (ALBERT's shared layer gives 0)."""
    m = LAYER_INDEX.search("." + name + ".")
    return int(m.group(1)) if m else None


def compile_patterns(patterns: Sequence[str], field: str = "exclude") -> List["re.Pattern[str]"]:
    """Compiled module-name regexes; an invalid one is an error naming `field`."""
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"AnalogConfig.{field}: invalid regex {p!r}: {e}") from None
    return out


@dataclass(frozen=True)
class Target:
    name: str
    module: nn.Module
    block: Optional[str]


def analog_matrices(model: nn.Module, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                    include: Sequence[str] = ()) -> List[Target]:
    """Every analog matrix of `model` once (shared modules, e.g. ALBERT's layer, once): the
    nn.Linear / Conv1D modules whose name matches an `include` regex (empty = all) and no
    `exclude` regex. `analogize`, the tile map and pruning all choose their matrices here."""
    inc, exc = compile_patterns(include, "include"), compile_patterns(exclude, "exclude")
    out = []
    for name, mod in model.named_modules():  # named_modules de-duplicates shared modules
        if not name or not is_analog_matrix(mod):
            continue
        if (inc and not any(p.search(name) for p in inc)) or any(p.search(name) for p in exc):
            continue
        out.append(Target(name, mod, block_of(name)))
    return out


def find_targets(model: nn.Module, blocks: Iterable[str],
                 exclude: Sequence[str] = ()) -> Dict[str, Target]:
    """Analog matrices of the requested blocks, by name. Raises if nothing matches."""
    blocks = tuple(blocks)
    bad = [b for b in blocks if b not in BLOCKS]
    if bad:
        raise ValueError(f"find_targets: unknown blocks {bad}; allowed {list(BLOCKS)}")
    found = {t.name: t for t in analog_matrices(model, tuple(DEFAULT_EXCLUDE) + tuple(exclude))
             if t.block in blocks}
    if not found:
        raise ValueError(f"find_targets: no nn.Linear/Conv1D module of {type(model).__name__} "
                         f"matches blocks {list(blocks)}; module names follow BERT/ALBERT/"
                         "DistilBERT/GPT-2/LLaMA conventions (see BLOCK_PATTERNS)")
    missing = [b for b in blocks if not any(t.block == b for t in found.values())]
    if missing:
        raise ValueError(f"find_targets: blocks {missing} match no module of "
                         f"{type(model).__name__}")
    return found


@dataclass(frozen=True)
class FFNGroup:
    """FC1 matrices (one, or gate+up for LLaMA) feeding one FC2 through an elementwise act."""
    fc1: Tuple[str, ...]
    fc2: str


def ffn_groups(names: Iterable[str]) -> List[FFNGroup]:
    """Pair every FC2 name with the FC1 name(s) sharing its intermediate dimension."""
    names = list(names)
    present = set(names)
    groups = []
    for name in names:
        if block_of(name) != "fc2":
            continue
        for fc2_suffix, fc1_suffixes in _FFN_SUFFIXES:
            if name == fc2_suffix or name.endswith("." + fc2_suffix):
                prefix = name[: len(name) - len(fc2_suffix)]
                fc1 = tuple(prefix + s for s in fc1_suffixes if prefix + s in present)
                if fc1:
                    groups.append(FFNGroup(fc1, name))
                break
    return groups


def ffn_size_attr(config) -> Optional[str]:
    """Name of the config attribute holding the FFN intermediate size, if any."""
    for attr in FFN_SIZE_ATTRS:
        if attr in config.to_dict():
            return attr
    return None
