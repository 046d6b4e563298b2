"""`SensitivityConfig`: what `analogformer sensitivity` measures, the `sensitivity:` section of a
study YAML (the command's options override it; `analogformer study` does not read it)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from ..config import fail


@dataclass
class SensitivityConfig:
    """One layer noisy at a time, per mode; then optionally the mixed mapping."""

    modes: Tuple[str, ...] = ("weights", "tiles")
    """How a layer is made noisy (`sensitivity.MODES`): weights, weights-absolute, outputs,
    outputs-absolute (white Gaussian noise) and tiles (the study's tile model on that layer alone)."""
    std: float = 0.1
    """Std of the white-noise modes: relative (× max|W| of the layer for weights, × rms of the
    output for outputs) or absolute (the -absolute modes; seed 004 used std 1)."""
    t_seconds: float = 2592000.0
    """Time since programming at which the tiles mode and the mixed mapping are read (1 month)."""
    repeats: int = 5
    """Device instances / noise draws per layer and mode."""
    digital_layers: bool = True
    """Also perturb the layers the analog config keeps digital: embeddings, output head, pooler."""
    layers: Optional[str] = None
    """A regex on module names: perturb only the layers it matches; null = all."""
    mixed_k: Tuple[int, ...] = ()
    """Mixed mapping: for each k, keep the k most sensitive analog matrices digital and evaluate
    the rest on tiles (e.g. [0, 1, 2, 4, 8]); empty = no mixed mapping."""
    mixed_mode: Optional[str] = None
    """The mode whose ranking chooses the matrices kept digital (one of `modes`); null = tiles
    when measured, else the first mode."""

    def __post_init__(self):
        from .modes import MODES
        if isinstance(self.modes, str):
            self.modes = tuple(m.strip() for m in self.modes.split(",") if m.strip())
        self.modes = tuple(self.modes)
        bad = [m for m in self.modes if m not in MODES]
        if not self.modes or bad or len(set(self.modes)) != len(self.modes):
            fail("SensitivityConfig", "modes", f"must be distinct entries of {list(MODES)}, got {list(self.modes)}")
        for n in ("std", "t_seconds"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (n == "std" and v == 0):
                fail("SensitivityConfig", n, f"must be a finite number {'> 0' if n == 'std' else '>= 0 (seconds)'}, "
                                             f"got {v!r}")
            setattr(self, n, float(v))
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            fail("SensitivityConfig", "repeats", f"must be a whole number >= 1, got {self.repeats!r}")
        if isinstance(self.mixed_k, int) and not isinstance(self.mixed_k, bool):
            self.mixed_k = (self.mixed_k,)
        if isinstance(self.mixed_k, str):
            try:
                self.mixed_k = tuple(int(k) for k in self.mixed_k.split(",") if k.strip())
            except ValueError:
                fail("SensitivityConfig", "mixed_k", f"must be whole numbers >= 0, e.g. 0,1,2,4; got {self.mixed_k!r}")
        self.mixed_k = tuple(self.mixed_k)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in self.mixed_k):
            fail("SensitivityConfig", "mixed_k", f"must be whole numbers >= 0, e.g. [0, 1, 2, 4]; got {list(self.mixed_k)}")
        if self.mixed_k and self.mixed_mode is not None and self.mixed_mode not in self.modes:
            fail("SensitivityConfig", "mixed_mode", f"{self.mixed_mode!r} must be one of the measured modes "
                                                    f"{list(self.modes)} (it ranks the matrices kept digital)")

    @property
    def ranking_mode(self) -> str:
        """The mode that ranks the matrices of the mixed mapping."""
        return self.mixed_mode or ("tiles" if "tiles" in self.modes else self.modes[0])
