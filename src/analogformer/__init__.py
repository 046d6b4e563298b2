"""analogformer: Hugging Face transformers on simulated PCM analog in-memory-computing tiles."""
from .config import (ADCConfig, AnalogConfig, CompensationConfig, DACConfig, PCMConfig,
                     TileConfig)

__version__ = "0.1.0"
