"""The study folder contract.

* One process at a time: `StudyFolder` takes an exclusive lock on ``DIR/.lock`` (with the
  holder's pid inside); a second `analogformer study` on the same folder stops at once with
  an error naming that process, so two runs never write the same records.
* One study per folder: ``config.yaml`` is the config of the records there. A re-run with
  the same config resumes; one that only grows `EXTENDABLE` lists (tasks, conditions, time
  points, repeats, retraining seeds) adds what is missing; any other change is refused once
  the folder holds results (a record or a checkpoint). A folder whose first run failed
  before producing any (a bad model path, a typo in the data folder) takes the corrected
  config.
* A checkpoint is reused only if it is complete, readable and finite (`checkpoint_saved`,
  `require_finite`); otherwise the error names the folder to delete to re-make it.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from torch import nn

from ..logs import get_logger
from ..training.checkpoint import nonfinite_parameters
from .config import EXTENDABLE, StudyConfig, config_changes, dump_study_config

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one process is trusted
    fcntl = None

logger = get_logger(__name__)
GIVEN = ".given"  # marks a checkpoint the user supplied (evaluate / prune), not one a run made


class StudyFolder:
    """``with StudyFolder(out) as folder:`` holds the folder's lock for the run."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._lock = None

    def __enter__(self) -> "StudyFolder":
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.out / ".lock", "a+")
        except OSError as e:
            raise ValueError(f"cannot write the study folder {self.out}: {e.strerror}; choose a writable "
                             "--out folder") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.seek(0)
                holder = self._lock.read().strip() or "unknown"
                self._lock.close()
                self._lock = None
                raise ValueError(f"{self.out} is in use by another analogformer process ({holder}); wait "
                                 "for it to finish, or choose another --out folder") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}")
        self._lock.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            if fcntl is not None:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def has_results(self) -> bool:
        """Whether a run has produced anything here: a record, or a checkpoint it made (a
        checkpoint `analogformer evaluate` / `prune` copied in is marked `GIVEN` and is not
        a result)."""
        results = self.out / "results.jsonl"
        made = [c for c in (self.out / "checkpoints").glob("*/*") if c.is_dir() and not (c / GIVEN).exists()]
        return (results.is_file() and results.stat().st_size > 0) or bool(made)

    def write_config(self, cfg: StudyConfig) -> None:
        """Write config.yaml, or refuse to mix results of a different config into the folder."""
        text = dump_study_config(cfg)
        path = self.out / "config.yaml"
        if path.exists() and path.read_text() != text:
            changes = config_changes(yaml.safe_load(path.read_text()) or {}, yaml.safe_load(text))
            if changes and not self.has_results():
                # a run that failed before its first checkpoint or record: nothing to protect
                logger.info(f"{self.out} holds no results yet: its config.yaml is replaced "
                            f"(changed: {changes[:5]})")
            elif changes:
                raise ValueError(f"{self.out} holds a study run with a different config (changed: "
                                 f"{changes[:5]}); choose another --out folder, or delete the folder "
                                 f"to start over (a study may only add to {', '.join(EXTENDABLE)})")
        path.write_text(text)


def checkpoint_saved(path: Path) -> bool:
    """A saved model in `path`: one safetensors file, or the index of a sharded one."""
    path = Path(path)
    return (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()


def require_finite(model: nn.Module, what: str, fix: str) -> nn.Module:
    """`model`, or a ValueError naming its non-finite tensors, `what` it is and the `fix`."""
    bad = nonfinite_parameters(model)
    if bad:
        raise ValueError(f"{what} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. "
                         f"{bad[:3]}; {fix}")
    return model
