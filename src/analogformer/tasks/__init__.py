"""Tasks: the registry (`registry`) and the registered tasks — GLUE (`glue` for the file
formats and batching, `metrics`, `glue_tasks` for the registered `GlueTask`s) and causal language modelling (`lm`,
`lm_data`, `lm_models`)."""
from .glue import (GLUE_TASKS, EncodedDataset, GlueExample, GlueTaskSpec, encode_examples,
                   get_task, load_glue_examples, make_loader, resolve_task)
from .glue_tasks import GlueTask, evaluate, load_checkpoint, load_model_and_tokenizer
from .lm import CausalLMTask, lm_metrics
from .metrics import (compute_metrics, glue_average, headline_metric, headline_value,
                      predictions_from_logits)
from .registry import (Task, TaskInfo, TaskRef, default_model_path, describe, find_task, register_task,
                       task_names, unregister_task)
from .squad import SquadTask  # registers "squad"

__all__ = ["GLUE_TASKS", "EncodedDataset", "GlueExample", "GlueTaskSpec", "encode_examples",
           "get_task", "load_glue_examples", "make_loader", "resolve_task", "compute_metrics",
           "glue_average", "headline_metric", "headline_value", "predictions_from_logits",
           "GlueTask", "evaluate", "load_checkpoint", "load_model_and_tokenizer",
           "Task", "TaskInfo", "TaskRef", "default_model_path", "describe", "find_task", "register_task",
           "task_names", "unregister_task", "SquadTask", "CausalLMTask", "lm_metrics"]
