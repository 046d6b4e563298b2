"""SmolLM2-135M: hardware-aware distillation from the digital model on WikiText-2 valid windows,
and the WikiText-2 test cross-entropy on tiles (`llm` preset) before and after (docs/lm-hwa.md).

    nice -n 5 python experiments/lm_hwa.py --steps 60 --out runs/lm-hwa/run.json
    nice -n 5 python experiments/lm_hwa.py --clip-table --out runs/lm-hwa/clip_table.json

The student is the digital model on tiles (`AnalogConfig.preset("llm")`) with HWA noise in the
forward (PCM programming-like weight noise relative to each channel, no clipping by default),
trained with `finetune` on the per-token KL to the digital model's logits (distill_weight 1).
Evaluation: CE of the first `--eval-windows` windows of 512 tokens of the raw test split, the
model programmed as `--repeats` device instances (program seeds 1000 + i, the same at every
evaluation, so before and after are paired) and read at each of the `--t` times (seconds), drift compensated. The evaluation at step 0 is the
model before HWA. `--model` takes what a study's `model:` takes (default: the bundled SmolLM2-135M
GGUF, de-quantized to float32). One torch thread (a shared 2-core machine).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import time
from pathlib import Path

import torch

import analogformer as af
from analogformer.tasks.lm import lm_metrics
from analogformer.tasks.lm_data import LMDataConfig, encode_windows, read_split_text, window_loader
from analogformer.training import HWAConfig, clip_weights, hwa_after_step, prepare_hwa, remove_hwa
from analogformer.training.finetune import FinetuneConfig, finetune

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"


def analog_ce(model, batches, repeats: int, times: list[float]) -> dict[float, list[float]]:
    """CE of a copy of `model` (HWA hooks removed) programmed as `repeats` device instances and read
    at each of `times` (one programming per instance, drifted to each time): {t: [CE per instance]}."""
    m = remove_hwa(copy.deepcopy(model))
    out: dict[float, list[float]] = {t: [] for t in times}
    for r in range(repeats):
        af.program(m, seed=1000 + r)
        for t in times:
            af.drift(m, t_seconds=t)
            out[t].append(lm_metrics(m, batches)["cross_entropy"])
    return out


def plot_curve(result: dict, path: Path) -> None:
    """Perplexity on tiles vs HWA training tokens, one line per read time (mean over the device
    instances, each instance a dot), the digital perplexity as a dashed line; log y."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_eval = result["instances_ce_by_eval"]
    tokens_per_step = result["args"]["batch"] * result["args"]["train_length"]
    x = [e["step"] * tokens_per_step for e in result["evals"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=150, layout="constrained")
    for i, t in enumerate(per_eval[0]):
        label = {"1.0": "1 s", "2592000.0": "1 month"}.get(t, f"{float(t):g} s")
        ces = [e[t] for e in per_eval]
        ax.plot(x, [math.exp(sum(c) / len(c)) for c in ces], marker="o", color=f"C{i}",
                label=f"on tiles, read at {label} (mean CE of {len(ces[0])} instances)")
        for xi, c in zip(x, ces):
            ax.scatter([xi] * len(c), [math.exp(v) for v in c], s=10, color=f"C{i}", alpha=0.5)
    ax.axhline(math.exp(result["digital_ce"]), color="k", ls="--", label=f"digital ({math.exp(result['digital_ce']):.1f})")
    ax.axhline(1.5 * math.exp(result["digital_ce"]), color="k", ls=":", label="1.5 × digital (issue 24 target)")
    ax.set_yscale("log")
    ax.set_xlabel("HWA training tokens")
    ax.set_ylabel("WikiText-2 perplexity")
    fig.suptitle("SmolLM2-135M on tiles (llm preset, compensated): perplexity vs HWA tokens")
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def parse_clip(text: str) -> dict:
    if text == "none":
        return {"clip": None}
    kind, sigma = text.split(":")
    return {"clip": "sigma", "clip_granularity": kind, "clip_sigma": float(sigma)}


CLIPS = [("none", "none"), ("per layer, 2.5σ (the GLUE HWA default)", "layer:2.5"), ("per channel, 2.5σ", "column:2.5"),
         ("per channel, 3.5σ", "column:3.5"), ("per channel, 5σ", "column:5")]


def clip_table(digital, batches) -> list[dict]:
    """Digital CE after one `clip_weights` of each recipe of CLIPS (ideal tiles = nn.Linear)."""
    rows = []
    for label, spec in CLIPS:
        m = af.analogize(copy.deepcopy(digital), af.AnalogConfig.ideal())
        clip_weights(m, HWAConfig(input_range_init=None, **parse_clip(spec)))
        r = lm_metrics(m, batches)
        rows.append({"clip": label, "cross_entropy": r["cross_entropy"], "perplexity": r["perplexity"]})
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m",
                   help="a causal LM as `model:` takes it (default: the bundled SmolLM2-135M GGUF)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch", type=int, default=1, help="windows per optimizer step")
    p.add_argument("--train-length", type=int, default=256, help="tokens per training window")
    p.add_argument("--train-windows", type=int, default=256, help="seeded subset of valid windows")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--noise-scale", type=float, default=1.0, help="HWAConfig.weight_noise_scale (pcm)")
    p.add_argument("--clip", default="none", help="none, layer:SIGMA or column:SIGMA")
    p.add_argument("--eval-windows", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--t", type=float, nargs="+", default=[1.0],
                   help="seconds after programming; the first one scores the run (e.g. --t 1 2592000)")
    p.add_argument("--state", default=None, help="training-state folder (resumable; checkpoint every eval)")
    p.add_argument("--clip-table", action="store_true", help="only the digital CE after each weight clip")
    p.add_argument("--plot-only", action="store_true", help="only (re)draw the curve of the --out JSON as .png")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.plot_only:
        plot_curve(json.loads(Path(a.out).read_text()), Path(a.out).with_suffix(".png"))
        return
    torch.set_num_threads(1)
    from analogformer.tasks.lm_models import load_causal_lm

    started = time.time()
    digital, tok = load_causal_lm(a.model)
    digital = digital.float().eval()
    ev = LMDataConfig(wikitext2_dir=str(DATA), window_tokens=512, subsample="first")
    eval_ds = encode_windows(read_split_text("wikitext2", "eval", ev), tok, ev, False, a.eval_windows, 0)
    batches = list(window_loader(eval_ds, 1, False))
    tr = LMDataConfig(wikitext2_dir=str(DATA), window_tokens=a.train_length)
    train_ds = encode_windows(read_split_text("wikitext2", "train", tr), tok, tr, True, a.train_windows, 0)
    loader = window_loader(train_ds, a.batch, True, seed=0)
    if a.clip_table:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "rows": clip_table(digital, batches)}, indent=1))
        return
    dig = lm_metrics(digital, batches)
    print(f"digital CE {dig['cross_entropy']:.4f} on {int(dig['tokens'])} tokens", flush=True)

    student = af.analogize(copy.deepcopy(digital), af.AnalogConfig.preset("llm"))
    hwa = HWAConfig(weight_noise="pcm", weight_noise_scale=a.noise_scale, weight_noise_relative_to="channel",
                    **parse_clip(a.clip))
    prepare_hwa(student, hwa, seed=0)
    cfg = FinetuneConfig(learning_rate=a.lr, epochs=max(1, math.ceil(a.steps / len(loader))), batch_size=a.batch,
                         max_steps=a.steps, warmup_ratio=0.1, distill_weight=1.0, distill_temperature=a.temperature,
                         eval_every=a.eval_every, checkpoint_every=a.eval_every if a.state else None)
    curve = []

    def score(m):
        by_t = analog_ce(m, batches, a.repeats, a.t)
        curve.append({str(t): ces for t, ces in by_t.items()})
        for t, ces in by_t.items():
            print(f"  eval {len(curve)}: t={t:g} s analog CE {sum(ces) / len(ces):.4f} {['%.4f' % c for c in ces]} "
                  f"({time.time() - started:.0f} s)", flush=True)
        first = by_t[a.t[0]]
        return sum(first) / len(first)

    hist = finetune(student, loader, cfg, after_step=hwa_after_step(hwa), progress=True, teacher=digital,
                    score=score, higher_is_better=False, state_dir=a.state)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python experiments/lm_hwa.py " + " ".join(argv or __import__("sys").argv[1:]),
        "args": vars(a), "hwa": hwa.__dict__, "finetune": cfg.__dict__,
        "digital_ce": dig["cross_entropy"], "eval_tokens": dig["tokens"],
        "train_tokens": hist.steps * a.batch * a.train_length,
        "evals": [{"step": s, "mean_ce": v} for s, v in hist.evals],
        "instances_ce_by_eval": curve, "losses": hist.losses, "seconds": round(time.time() - started),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    if isinstance(curve[0], dict):
        plot_curve(result, Path(a.out).with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("digital_ce", "evals", "train_tokens", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
