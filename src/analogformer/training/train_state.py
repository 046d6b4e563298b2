"""Training-state checkpoints of `finetune` (`FinetuneConfig.checkpoint_every`): everything a
run needs to continue as if it had not stopped — the model's state dict (weights, learned DAC
ranges, output scales), optimizer and schedule, the position in the data (epoch, batches
consumed), the RNG states (dropout, HWA noise draws, augmentation; the GPU's too for a model on
a GPU), the weight average, the kept best state and the history.

One file per folder, `train_state.pt`, written to a temporary name and renamed into place: a
run killed while saving leaves the previous state. The file records the recipe it was made
with; a resume under another recipe is refused (it would silently mix two trainings).

Data-parallel (`distributed.py`): rank 0 writes the file, with the RNG states of every process
(`"ranks"`), while the others wait; every process reads it to resume, so the folder must be
on a file system all of them see, and the run must have as many processes as the one that
saved it (each continues its own noise draws).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import torch

__all__ = ["STATE_FILE", "save_train_state", "load_train_state"]

STATE_FILE = "train_state.pt"
# fields that may differ between the run that saved a state and the one resuming it
_FREE = {"checkpoint_every", "max_eval_examples"}


def _recipe(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE}


def save_train_state(folder: str | Path, loop, position: tuple[int, int]) -> Path:
    """Write the state of `loop` (a `finetune._Loop`) after the batches up to `position`
    = (epoch, batches of that epoch consumed); returns the file. Data-parallel, every process
    calls this (their RNG states are gathered) and rank 0 writes."""
    ranks, draws = loop.ranks, _draws(loop)
    state = {
        "recipe": _recipe(loop.cfg),
        "position": tuple(position),
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "history": dataclasses.asdict(loop.history),
        **draws,
        "ema": None if loop.ema is None else [a.detach().clone() for a in loop.ema.average],
        "best": loop.best,
    }
    if ranks.parallel:
        state["ranks"] = {"size": ranks.size, "draws": ranks.gather(draws)}
    return ranks.on_main(_write, Path(folder), state)  # the others wait until the file is in place


def _draws(loop) -> dict:
    """The states of this process's random draws: torch's CPU RNG, the augmentation generator and,
    on a GPU, its RNG (where the HWA noise of a model on that GPU is drawn)."""
    draws = {"rng": torch.get_rng_state(), "aug_rng": None if loop.aug_gen is None else loop.aug_gen.get_state()}
    if loop.device.type == "cuda":
        draws["cuda_rng"] = torch.cuda.get_rng_state(loop.device)
    return draws


def _write(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = folder / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_train_state(folder: str | Path, loop) -> Optional[dict]:
    """Restore `loop` from the state in `folder` (model, optimizer, schedule, history, weight
    average, best state); returns the state (its "position" and RNG states are applied by the
    loop when it reaches that position; data-parallel, this process's), or None when the folder
    holds no state."""
    path, ranks = Path(folder) / STATE_FILE, loop.ranks
    seen = ranks.gather(path.exists())
    if len(set(seen)) > 1:
        raise ValueError(f"the training state {path} exists for the processes {[r for r, s in enumerate(seen) if s]} "
                         f"only: state_dir must be a folder every process reads (a shared file system)")
    if not seen[0]:
        return None
    try:
        state = torch.load(path, map_location=loop.device, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"the training state {path} cannot be read ({type(e).__name__}: {e}); delete it to "
                         "train from the start") from None
    mine = _recipe(loop.cfg)
    if state["recipe"] != mine:
        diff = sorted(k for k in set(mine) | set(state["recipe"]) if mine.get(k) != state["recipe"].get(k))
        raise ValueError(f"the training state {path} was saved by a fine-tuning with other settings ({diff}); "
                         "resume with the recipe it was saved with, or delete the file to train from the start")
    size = state["ranks"]["size"] if "ranks" in state else 1
    if size != ranks.size:
        raise ValueError(f"the training state {path} was saved by a run of {size} process(es) and this run has "
                         f"{ranks.size}: each process continues its own random draws; resume with {size} "
                         f"process(es) (torchrun --nproc_per_node={size}, or no launcher for 1), or delete the "
                         "file to train from the start")
    if ranks.parallel:
        state.update(state["ranks"]["draws"][ranks.rank])
    for key in ("rng", "aug_rng", "cuda_rng"):  # generator states are CPU byte tensors, whatever map_location did
        if torch.is_tensor(state.get(key)):
            state[key] = state[key].cpu()
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    h = state["history"]
    loop.history.losses[:] = h["losses"]
    loop.history.learning_rates[:] = h["learning_rates"]
    loop.history.evals[:] = [tuple(e) for e in h["evals"]]
    loop.history.best_step = h["best_step"]
    if loop.ema is not None:
        with torch.no_grad():
            for a, saved in zip(loop.ema.average, state["ema"]):
                a.copy_(saved)
    loop.best.clear()
    loop.best.update(state["best"])
    return state
