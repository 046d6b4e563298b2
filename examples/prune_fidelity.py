"""How close pruned models are to the dense one: dev metric, agreement, KL.

On small dev sets (MRPC 408, RTE 277 examples) the metric moves by a point for a handful of
flipped predictions, so it is a coarse view of what pruning did; the share of dev predictions
equal to the dense model's and the mean KL(dense ‖ pruned) of the output distributions show
how much of the dense function is left. This prints all three for

* pruned checkpoints a study saved (`--pruned runs/X/checkpoints/<task>/pruned`, compacted
  HF models, e.g. after retraining), and
* with `--oneshot`, the study's `pruning.prune` method (and its `baselines`) applied to the
  dense model right now, masked and — where `reconstruct` is on — after the least-squares
  refit, with the calibration batches the study would use (same seed, same order).

    python examples/prune_fidelity.py configs/seed000-prune-ffn.yaml --task rte \\
        --dense runs/dense/checkpoints/rte/digital --oneshot \\
        --set 'pruning.prune={criterion: obs, structure: rows, blocks: [fc2], coupled_ffn: true, reconstruct: true}' \\
        --set 'pruning.ratios=[0.3333333]' --set 'pruning.baselines=[]' --set pruning.calibration_batches=16
"""
from __future__ import annotations

import argparse
import copy

import torch

from analogformer.study.config import load_study_config
from analogformer.study.data import TaskData
from analogformer.tasks import load_checkpoint
from analogformer.training.finetune import predict
from analogformer.tasks.metrics import compute_metrics, headline_value, predictions_from_logits


def fidelity(task: str, logits: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor) -> dict:
    """Headline dev metric (in %), agreement with the reference's predictions and mean
    KL(reference ‖ model) over the examples (0 for regression heads: agreement is then
    not defined and KL is replaced by the mean squared difference)."""
    metric = 100 * headline_value(task, compute_metrics(task, predictions_from_logits(task, logits),
                                                        labels.numpy()))
    if logits.shape[-1] == 1:
        return {"metric": metric, "agree": float("nan"), "kl": float(((logits - ref) ** 2).mean())}
    log_p, log_q = torch.log_softmax(ref.double(), -1), torch.log_softmax(logits.double(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    agree = (logits.argmax(-1) == ref.argmax(-1)).double().mean()
    return {"metric": metric, "agree": float(agree), "kl": float(kl)}


def main(argv=None) -> list:
    """Prints the table; returns its rows [(name, {metric, agree, kl})]."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=None, help="study YAML (default: the built-in defaults)")
    p.add_argument("--task", required=True, help="GLUE task, e.g. rte")
    p.add_argument("--dense", required=True, help="dense checkpoint folder (a study's checkpoints/<task>/digital)")
    p.add_argument("--pruned", action="append", default=[], help="pruned (compacted) checkpoint folder; repeatable")
    p.add_argument("--oneshot", action="store_true",
                   help="also prune the dense model with the config's pruning.prune (+ baselines) now")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    a = p.parse_args(argv)
    cfg = load_study_config(a.config, [*a.overrides, f"tasks=[{a.task}]"])
    dense, tok = load_checkpoint(a.dense)
    if tok is None:
        raise SystemExit(f"{a.dense}: no tokenizer saved beside the model; pass a study checkpoint folder")
    dense.eval()
    data = TaskData(cfg, a.task, tok)
    key, batches = next(iter(data.evals.items()))
    ref, labels = predict(dense, batches)
    rows = [("dense", fidelity(key, ref, labels, ref))]
    for path in a.pruned:
        from analogformer.pruning import load_compacted
        model = load_compacted(path).eval()
        rows.append((path, fidelity(key, predict(model, batches)[0], labels, ref)))
    if a.oneshot:
        if cfg.pruning is None:
            raise SystemExit("--oneshot needs a `pruning:` section in the config (or --set pruning.prune=...)")
        from analogformer.pruning import calibrate, kept_units, prune, reconstruct
        pcfg = cfg.pruning
        if pcfg.progressive:
            raise SystemExit("--oneshot prunes from the dense model only; progressive rounds retrain "
                             "between ratios: run the study and pass its checkpoints with --pruned "
                             "(or --set pruning.progressive=false)")
        # the study's calibration batches (study.prune_step: same loader, seed and count)
        calib = data.unlabelled_batches(pcfg.calibration_batches,
                                        cfg.finetune_for(data.name).batch_size, cfg.seed + 3)
        stats_cache: dict = {}
        kept: list = []  # how each method shared out the removals (tiles: whole 512s free one)
        for label, pc, _ in pcfg.runs():
            stats = None
            if pc.needs_calibration:
                if pc.criterion not in stats_cache:
                    stats_cache[pc.criterion] = calibrate(dense, calib, pc)
                stats = stats_cache[pc.criterion]
            model = copy.deepcopy(dense).eval()
            masks = prune(model, pc, stats)
            tag = f"{label} {pc.ratio:.3f}"
            kept.append(f"{tag}: {pc.structure} kept per matrix: "
                        + "; ".join(f"{b} {v}" for b, v in kept_units(model, pc, masks).items()))
            rows.append((f"{tag} masked", fidelity(key, predict(model, batches)[0], labels, ref)))
            if pc.reconstruct:
                reconstruct(model, dense, masks, calib, pc.reconstruct_damping)
                rows.append((f"{tag} refit", fidelity(key, predict(model, batches)[0], labels, ref)))
    width = max(len(name) for name, _ in rows)
    print(f"{a.task} dev ({len(labels)} examples): metric, agreement with the dense model, KL(dense || model)")
    print(f"{'model':<{width}}  {'metric':>7}  {'agree':>6}  {'KL':>7}")
    for name, r in rows:
        print(f"{name:<{width}}  {r['metric']:7.2f}  {r['agree']:6.3f}  {r['kl']:7.4f}")
    if a.oneshot:
        print("\n".join(kept))
    return rows


if __name__ == "__main__":
    main()
