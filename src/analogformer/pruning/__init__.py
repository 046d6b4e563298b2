"""Pruning for analog tiles: MAC-contribution analysis (seed 000), baseline criteria
(seed 003), hard masks for retraining, ADMM, and physical removal of FFN units. Which
matrices are analog and which block each belongs to is `analogformer.nn.targets`; the
pictures of the MAC analysis are in `analogformer.report.figures`."""
from .admm import ADMMPruner
from .compact import CompactResult, compact, load_compacted, resize_ffn
from .criteria import (MaskContext, compute_masks, kept_units, mask_context, masks_from_weights,
                       prune, removed_units, unit_scores)
from .mac import (LayerStats, MacStats, calibrate, capture_frames, mac_delta,
                  mac_unit_scores, product_elements)
from .gradual import GradualPruner, stage_config
from .masks import PruningMasks
from .prune_config import CRITERIA, SCOPES, STRUCTURES, PruneConfig
from .reconstruct import reconstruct
from ..nn.targets import (BLOCKS, DEFAULT_EXCLUDE, FFNGroup, analog_matrices, block_of,
                      ffn_groups, find_targets, linear_weight)

__all__ = [
    "ADMMPruner", "BLOCKS", "CRITERIA", "CompactResult", "DEFAULT_EXCLUDE", "FFNGroup",
    "GradualPruner", "LayerStats", "MacStats", "MaskContext", "PruneConfig", "PruningMasks",
    "SCOPES", "STRUCTURES", "analog_matrices", "block_of", "calibrate", "capture_frames",
    "compact", "compute_masks", "ffn_groups", "find_targets", "kept_units", "linear_weight",
    "load_compacted", "mac_delta", "mac_unit_scores", "mask_context", "masks_from_weights",
    "product_elements", "prune",
    "reconstruct", "removed_units", "resize_ffn", "stage_config", "unit_scores",
]
