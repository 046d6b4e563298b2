"""Per-layer noise sensitivity (seed 004): the headline metric with only one layer noisy, per
layer and mode (`MODES`: white noise on its weights or outputs, or the tile model on it alone),
with device instances and SEM; weight statistics and their rank correlation with the drop; a
heat-map and a ranked table; and the mixed mapping (the k most sensitive matrices kept digital:
metric and tiles vs k). `analogformer sensitivity` runs it on a study's or a checkpoint's model.

Imports are lazy: the study config imports `SensitivityConfig` from here, and the analysis
imports the study's sweep."""
from .config import SensitivityConfig

__all__ = ["MODES", "Layer", "Sensitivity", "SensitivityConfig", "find_layers", "mixed_mapping", "sensitivity",
           "weight_stats", "write_report"]


def __getattr__(name):
    if name in ("MODES",):
        from .modes import MODES
        return MODES
    if name in ("Layer", "find_layers", "weight_stats"):
        from . import layers
        return getattr(layers, name)
    if name in ("Sensitivity", "sensitivity", "mixed_mapping"):
        from . import run
        return getattr(run, name)
    if name == "write_report":
        from .report import write_report
        return write_report
    raise AttributeError(name)
