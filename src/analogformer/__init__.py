"""analogformer: Hugging Face transformers on simulated PCM analog in-memory-computing tiles.

    import analogformer as af
    cfg = af.AnalogConfig()
    model = af.analogize(hf_model, cfg)
    af.program(model, seed=0)
    af.drift(model, t_seconds=2_592_000)
"""
from .config import (ADCConfig, AnalogConfig, CompensationConfig, DACConfig, PCMConfig,
                     TileConfig)
from .inference import (calibrate_input_ranges, drift, program, reseed_noise, reset,
                        set_compensation, unprogram)
from .nn.convert import analog_layers, analogize, ideal_state
from .nn.linear import AnalogLinear
from .runtime import tune_allocator

__version__ = "0.1.0"

__all__ = [
    "ADCConfig", "AnalogConfig", "AnalogLinear", "CompensationConfig", "DACConfig",
    "PCMConfig", "TileConfig", "analog_layers", "analogize", "calibrate_input_ranges",
    "drift", "ideal_state", "program", "reseed_noise", "reset", "set_compensation", "tune_allocator",
    "unprogram",
]
