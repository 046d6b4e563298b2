"""Pruning for analog tiles: MAC-contribution analysis (seed 000), baseline criteria
(seed 003; the criteria registry is `pruning.scores`), hard masks for retraining, ADMM,
schedules (one-shot, gradual, progressive, ADMM: `pruning.schedule`), and physical removal
of FFN units. Which
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
from .schedule import (SCHEDULES, ADMMSchedule, GradualSchedule, OneShotSchedule, ProgressiveSchedule,
                       Schedule, check_supported, register_schedule, schedule_from_dict)
from .scores import CRITERION_REGISTRY, Criterion, criterion, register_criterion
from ..nn.targets import (BLOCKS, DEFAULT_EXCLUDE, FFNGroup, analog_matrices, block_of,
                      ffn_groups, find_targets, linear_weight)

__all__ = [
    "ADMMPruner", "ADMMSchedule", "BLOCKS", "CRITERIA", "CRITERION_REGISTRY", "CompactResult",
    "Criterion", "DEFAULT_EXCLUDE", "FFNGroup", "GradualPruner", "GradualSchedule", "LayerStats",
    "MacStats", "MaskContext", "OneShotSchedule", "ProgressiveSchedule", "PruneConfig",
    "PruningMasks", "SCHEDULES", "SCOPES", "STRUCTURES", "Schedule", "analog_matrices",
    "block_of", "calibrate", "capture_frames", "check_supported", "compact", "compute_masks",
    "criterion", "ffn_groups", "find_targets", "kept_units", "linear_weight", "load_compacted",
    "mac_delta", "mac_unit_scores", "mask_context", "masks_from_weights", "product_elements",
    "prune", "reconstruct", "register_criterion", "register_schedule", "removed_units",
    "resize_ffn", "schedule_from_dict", "stage_config", "unit_scores",
]
