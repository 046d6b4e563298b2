"""Physical removal of pruned FFN intermediate units (smaller matrices, fewer tiles).

Only the FFN intermediate dimension is removed: a dead unit j (FC2 input row j all zero)
takes FC2's input row j, FC1's output column j and FC1's bias entry j (gate and up for
LLaMA) with it. This is exact because the activation is elementwise and FC2 multiplies
unit j only by zeros. Other row/column pruning (hidden-size inputs or outputs of Q/K/V,
out-projection, FC1 rows, FC2 columns) cannot shrink the model — the residual stream keeps
its width — so those stay as zero masks; `mapping.map_model(..., live_only=True)` counts
the tiles they free.

Hugging Face configs hold one intermediate size for all layers. When every FFN keeps the
same number of units (always true for ALBERT's shared layer and for scope="layer"),
`config.<intermediate_size | hidden_dim | n_inner>` is updated and the compacted model
saves and reloads with plain `save_pretrained` / `from_pretrained`. When sizes differ
(scope="global"), the per-layer sizes are stored in `config.analogformer_ffn_sizes`
({FC2 module name: size}), the config attribute holds the largest size, and the model
must be reloaded with `load_compacted` (which rebuilds the smaller layers before loading
the weights); plain `from_pretrained` fails on the shape mismatch by design.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from .masks import PruningMasks
from ..nn.targets import analog_matrices, ffn_groups, ffn_size_attr, linear_weight

SIZES_KEY = "analogformer_ffn_sizes"


@dataclass
class CompactResult:
    masks: Optional[PruningMasks]   # the input masks restricted to the kept units
    ffn_sizes: Dict[str, int]       # FC2 module name -> intermediate size after compaction
    sizes_before: Dict[str, int]
    removed_parameters: int

    @property
    def uniform(self) -> bool:
        return len(set(self.ffn_sizes.values())) <= 1


def _slice_out(mod: nn.Module, keep: torch.Tensor) -> None:
    """Keep output features `keep` of an FC1 (weight rows in (out, in) orientation)."""
    with torch.no_grad():
        if isinstance(mod, nn.Linear):
            mod.weight = nn.Parameter(mod.weight[keep].clone(), mod.weight.requires_grad)
            mod.out_features = int(keep.sum())
        else:  # Conv1D (in, out)
            mod.weight = nn.Parameter(mod.weight[:, keep].clone(), mod.weight.requires_grad)
            mod.nf = int(keep.sum())
        if mod.bias is not None:
            mod.bias = nn.Parameter(mod.bias[keep].clone(), mod.bias.requires_grad)


def _slice_in(mod: nn.Module, keep: torch.Tensor) -> None:
    """Keep input features `keep` of an FC2."""
    with torch.no_grad():
        if isinstance(mod, nn.Linear):
            mod.weight = nn.Parameter(mod.weight[:, keep].clone(), mod.weight.requires_grad)
            mod.in_features = int(keep.sum())
        else:
            mod.weight = nn.Parameter(mod.weight[keep].clone(), mod.weight.requires_grad)


def compact(model: nn.Module, masks: Optional[PruningMasks] = None) -> CompactResult:
    """Remove dead FFN intermediate units in place; see the module docstring.

    With `masks`, they are applied first (so FC2 rows they prune are zero). Returns the
    masks restricted to the surviving units (for further masked retraining; the optimizer
    must be re-created because parameters are replaced) and the new sizes. Note: parameters
    are replaced, so analog state tied to a weight's shape must be re-programmed after.
    """
    if masks is not None:
        masks.apply(model)
    mods = {t.name: t.module for t in analog_matrices(model, exclude=())}
    new_w = dict(masks.weight) if masks is not None else None
    new_b = dict(masks.bias) if masks is not None else None
    sizes, before, removed = {}, {}, 0
    for g in ffn_groups(mods):
        w2 = linear_weight(mods[g.fc2]).detach()
        keep = (w2 != 0).any(0)
        before[g.fc2] = w2.shape[1]
        sizes[g.fc2] = int(keep.sum())
        if bool(keep.all()):
            continue
        removed += int((~keep).sum()) * w2.shape[0]
        _slice_in(mods[g.fc2], keep)
        for n in g.fc1:
            w1 = linear_weight(mods[n])
            removed += int((~keep).sum()) * (w1.shape[1] + (mods[n].bias is not None))
            _slice_out(mods[n], keep)
        if new_w is not None:
            if g.fc2 in new_w:
                new_w[g.fc2] = new_w[g.fc2][:, keep]
            for n in g.fc1:
                if n in new_w:
                    new_w[n] = new_w[n][keep]
                if n in new_b:
                    new_b[n] = new_b[n][keep]
    config = getattr(model, "config", None)
    attr = ffn_size_attr(config) if config is not None else None
    if attr is not None and sizes:
        setattr(config, attr, max(sizes.values()))
        if len(set(sizes.values())) > 1:
            setattr(config, SIZES_KEY, dict(sizes))
        elif hasattr(config, SIZES_KEY):
            delattr(config, SIZES_KEY)
    out_masks = PruningMasks(new_w, new_b) if new_w is not None else None
    return CompactResult(out_masks, sizes, before, removed)


def resize_ffn(model: nn.Module, sizes: Dict[str, int]) -> None:
    """Give the FFNs named by their FC2 the intermediate sizes `sizes` (weights are
    placeholders, to be overwritten by a state dict)."""
    mods = {t.name: t.module for t in analog_matrices(model, exclude=())}
    groups = {g.fc2: g for g in ffn_groups(mods)}
    unknown = [n for n in sizes if n not in groups]
    if unknown:
        raise ValueError(f"resize_ffn: {unknown} are not FC2 modules of {type(model).__name__}")
    for name, size in sizes.items():
        g = groups[name]
        cur = linear_weight(mods[name]).shape[1]
        if size > cur:
            raise ValueError(f"resize_ffn: {name} has {cur} units, cannot grow to {size}")
        keep = torch.zeros(cur, dtype=torch.bool)
        keep[:size] = True
        _slice_in(mods[name], keep)
        for n in g.fc1:
            _slice_out(mods[n], keep)


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        sd: Dict[str, torch.Tensor] = {}
        for fn in files:
            sd.update(load_file(os.path.join(path, fn)))
        return sd
    raise FileNotFoundError(f"load_compacted: no model.safetensors in {path!r}")


def load_compacted(path: str, model_class=None) -> nn.Module:
    """Reload a model saved after `compact` (per-layer FFN sizes allowed).

    `model_class`: the HF class it was saved from (default: config.architectures[0]).
    """
    import transformers
    config = transformers.AutoConfig.from_pretrained(path)
    if model_class is None:
        if not config.architectures:
            raise ValueError("load_compacted: config has no `architectures`; pass model_class")
        model_class = getattr(transformers, config.architectures[0])
    sizes = getattr(config, SIZES_KEY, None)
    if not sizes:
        return model_class.from_pretrained(path)
    model = model_class(config)
    resize_ffn(model, sizes)
    sd = _read_state_dict(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"load_compacted: unexpected keys {unexpected[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in sd if k in params}
    untied = [k for k in missing if k in params and params[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"load_compacted: checkpoint lacks parameters {untied[:5]}")
    model.eval()
    return model
