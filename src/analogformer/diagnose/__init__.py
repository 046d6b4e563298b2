"""Diagnosis: which non-ideality costs how much. The headline metric of a model on tiles
with each non-ideality alone on and alone off (`diagnose`), the registry of what is switched
(`EFFECTS`), and the report (`write_report`: diagnosis.md and diagnosis.png). The command
line (`analogformer diagnose`) loads a study's or a checkpoint's model and task (`target`)."""
from .effects import EFFECTS, Effect, Row, build_rows, ideal_config
from .report import render_markdown, write_report
from .run import Diagnosis, diagnose

__all__ = ["EFFECTS", "Diagnosis", "Effect", "Row", "build_rows", "diagnose", "ideal_config",
           "render_markdown", "write_report"]
