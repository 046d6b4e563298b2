"""Tasks: GLUE data (local GLUE folders or HF datasets) and their metrics."""
from .glue import (GLUE_TASKS, EncodedDataset, GlueExample, GlueTaskSpec, encode_examples,
                   get_task, load_glue_examples, make_loader, resolve_task)
from .metrics import (compute_metrics, glue_average, headline_metric, headline_value,
                      predictions_from_logits)

__all__ = ["GLUE_TASKS", "EncodedDataset", "GlueExample", "GlueTaskSpec", "encode_examples",
           "get_task", "load_glue_examples", "make_loader", "resolve_task", "compute_metrics",
           "glue_average", "headline_metric", "headline_value", "predictions_from_logits"]
