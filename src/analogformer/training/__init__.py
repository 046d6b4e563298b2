"""Training on (simulated) tiles: hardware-aware training (`hwa`), the fine-tuning loop
(`finetune`), distillation losses and augmentation (`distill`), weight averaging
(`averaging`). The HWA names are re-exported here: `from analogformer.training import
HWAConfig, prepare_hwa, hwa_after_step, remove_hwa`."""
from .hwa import (OUTPUT_SCALE, GaussianWeightNoise, HWAConfig, PCMWeightNoise, clamp_input_ranges,
                  clip_weights, hwa_after_step, input_range_parameters, param_groups, prepare_hwa,
                  remove_hwa)

__all__ = ["HWAConfig", "GaussianWeightNoise", "PCMWeightNoise", "prepare_hwa", "remove_hwa",
           "clip_weights", "clamp_input_ranges", "hwa_after_step", "param_groups",
           "input_range_parameters", "HWACallback", "DistillationTrainer", "OUTPUT_SCALE"]


def __getattr__(name: str):
    # HWACallback and DistillationTrainer are built on first use so importing training does not import the HF Trainer
    if name in ("HWACallback", "DistillationTrainer"):
        from .hf_trainer import trainer_classes
        return trainer_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
