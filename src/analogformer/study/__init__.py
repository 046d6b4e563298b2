"""The pipeline a study YAML describes: its config (`config`), the run (`pipeline`), the
fine-tuning and pruning steps (`finetune_step`, `prune_step`), the over-time sweep
(`sweep`), the record log (`records`) and merging of study folders (`merge`)."""
from .config import StudyConfig, load_study_config
from .pipeline import run_study

__all__ = ["StudyConfig", "load_study_config", "run_study"]
