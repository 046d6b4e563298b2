"""HWA fine-tuning of one study task on several GPUs (or CPU processes), data-parallel.

This runs the HWA step of a study (`hwa.recipe`, and `hwa.finetune` over `finetune`). It starts
from the digital model a study saved and trains it in N processes. `finetune.batch_size` is the
global batch: each process takes its share of every batch, and the gradients are summed over the
processes. Each process draws its own weight and output noise. The weights, DAC ranges and
clipping stay identical in every process (docs/distributed.md).

    torchrun --nproc_per_node=4 examples/hwa_ddp.py configs/quickstart.yaml --task sst2 \\
        --digital runs/quick/checkpoints/sst2/digital --out runs/sst2-hwa-ddp
    accelerate launch --num_processes 4 examples/hwa_ddp.py configs/quickstart.yaml --task sst2 ...
    python examples/hwa_ddp.py configs/quickstart.yaml --task sst2 ...     # one process

With GPUs, each process uses the GPU of its LOCAL_RANK (NCCL). Without GPUs the processes
run on the CPU (gloo). Rank 0 writes OUT/model (the HF model with the trained weights, HWA
removed), OUT/input_ranges.json (the learned DAC ranges) and OUT/history.json. When the recipe
sets `checkpoint_every`, the training state goes to OUT/state. A run started again resumes
from that state, with the same number of processes. This trains one candidate (`best_of` is
the study's business). It does not take `hwa.teacher_text`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from analogformer.nn.convert import analog_layers, analogize
from analogformer.study.config import load_study_config
from analogformer.study.data import TaskData
from analogformer.study.finetune_step import analog_dev_headline, hwa_recipe
from analogformer.training import hwa_after_step, prepare_hwa, remove_hwa
from analogformer.training.checkpoint import to_device
from analogformer.training.distributed import Ranks
from analogformer.training.finetune import finetune, save_checkpoint


def join_processes() -> torch.device:
    """Join the process group that torchrun / accelerate launch describe in the environment.
    Returns this process's device. Without a launcher this is a single process."""
    gpu = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return torch.device("cuda" if gpu else "cpu")
    if gpu:
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def ranges_of(model) -> dict:
    return {name: float(layer.input_range.detach()) for name, layer in analog_layers(model)}


def tiles_score(cfg, data, model) -> float:
    """The dev headline on tiles of the model in training (the study's HWA dev score). It runs
    on rank 0 only, on a plain copy."""
    trained = remove_hwa(copy.deepcopy(model))
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(trained, None, tmp)
        plain = data.task.load_trained(tmp)
    return analog_dev_headline(cfg, data, plain, ranges_of(trained))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=None, help="study YAML (default: the built-in defaults)")
    p.add_argument("--task", required=True, help="the task, e.g. sst2")
    p.add_argument("--digital", required=True, help="the digital checkpoint folder (a study's "
                   "checkpoints/<task>/digital, with its tokenizer)")
    p.add_argument("--out", required=True, type=Path, help="output folder (written by rank 0)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    a = p.parse_args(argv)
    device = join_processes()
    ranks = Ranks.current(device)
    try:
        from transformers import AutoTokenizer

        cfg = load_study_config(a.config, [*a.overrides, f"tasks=[{a.task}]"])
        h = cfg.hwa
        if h is None or h.teacher_text is not None:
            raise SystemExit("the config needs an `hwa:` section without `teacher_text` (this script trains "
                             "on the task's training set)")
        tok = AutoTokenizer.from_pretrained(a.digital)
        data = TaskData(cfg, a.task, tok)  # every process loads the same data, in the same order
        digital = data.task.load_trained(a.digital).to(device)
        fk = hwa_recipe(cfg, data)
        if h.init_from == "digital":
            model = digital
        else:  # the pre-trained model, as the study loads it
            model = data.task.load_model(cfg.model or data.task.default_model(), seed=cfg.seed)[0].to(device)
        model = analogize(copy.deepcopy(model), copy.deepcopy(cfg.analog))
        prepare_hwa(model, h.recipe, calib_batches=[to_device(b, device) for b in data.calib], seed=fk.seed)
        hist = finetune(model, data.train_loader(fk.batch_size, fk.seed + 7), fk,
                        after_step=hwa_after_step(h.recipe), progress=ranks.main,
                        teacher=digital if fk.needs_teacher else None, special_ids=data.special_ids,
                        score=(lambda m: tiles_score(cfg, data, m)) if fk.eval_every else None,
                        higher_is_better=data.higher_is_better,
                        state_dir=a.out / "state" if fk.checkpoint_every else None)
        remove_hwa(model)
        if ranks.main:
            save_checkpoint(model, tok, a.out / "model")
            (a.out / "input_ranges.json").write_text(json.dumps(ranges_of(model), indent=1))
            (a.out / "history.json").write_text(json.dumps(
                {"processes": ranks.size, "losses": hist.losses, "evals": hist.evals,
                 "best_step": hist.best_step}, indent=1))
            print(f"{a.task}: {hist.steps} steps on {ranks.size} process(es), last loss "
                  f"{hist.losses[-1]:.4f}; model in {a.out / 'model'}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
