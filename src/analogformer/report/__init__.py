"""Reports of a study folder: records -> tables (`build`), formatting (`format`), Markdown
and HTML rendering (`render`), and every plot of the package (`plots`: metric over time and
pruning curves; `figures`: seed 000's MAC pictures and the tile layout)."""
from .build import build_report, load_records, summarize, time_label

__all__ = ["build_report", "load_records", "summarize", "time_label"]
