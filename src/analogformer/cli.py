"""`analogformer` command line: study, evaluate, prune, diagnose, sensitivity, map, report, merge, demo."""
from __future__ import annotations

import argparse
import textwrap
import sys
from pathlib import Path
from typing import List, Optional

EPILOG = "Every command takes --help. Presets for the seed experiments are in configs/."

# Commands import what they use when they run, so `analogformer --help` and `map` start
# without loading the training / pruning / plotting stacks.


def _add_set(p):
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set analog.adc.bits=8 --set sweep.repeats=5")


def cmd_study(a) -> int:
    from .study import load_study_config, run_study
    ray = [("execution.ray", a.ray)] if a.ray else []
    cfg = load_study_config(a.config, list(a.overrides) + ray)
    run_study(cfg, out_dir=a.out, progress=not a.no_progress)
    return 0


def _study_on_checkpoint(a, conditions, extra=()) -> int:
    """Run a study whose digital model is an already fine-tuned checkpoint (no training)."""
    import shutil

    from .study import load_study_config, run_study
    from .study.folder import GIVEN, checkpoint_saved
    from .tasks import find_task
    ckpt = Path(a.checkpoint)
    if not (ckpt / "config.json").is_file():
        raise ValueError(f"{ckpt} is not a saved model folder (no config.json); pass the folder "
                         "written by save_pretrained / `analogformer study` (checkpoints/TASK/digital)")
    over = [("model", str(ckpt)), ("tasks", [a.task]), ("conditions", conditions)] + list(extra)
    if a.glue_dir:
        over.append(("data.glue_dir", a.glue_dir))
    cfg = load_study_config(a.config, over + list(a.overrides))
    out = Path(a.out)
    target = out / "checkpoints" / find_task(a.task).name / "digital"
    if not checkpoint_saved(target):
        target.mkdir(parents=True, exist_ok=True)
        for f in ckpt.iterdir():
            if f.is_file():
                shutil.copy2(f, target / f.name)
        (target / GIVEN).write_text(f"copied from {ckpt.resolve()}\n")  # not a result of this folder's runs
    run_study(cfg, out_dir=str(out), progress=not a.no_progress)
    return 0


def cmd_evaluate(a) -> int:
    """A saved (fine-tuned) model of a registered task over time: no training."""
    return _study_on_checkpoint(a, a.conditions.split(","))


def cmd_prune(a) -> int:
    """Prune a saved fine-tuned model, retrain with masks, compact, evaluate on tiles."""
    from .study import load_study_config
    extra = []
    if a.config is None or load_study_config(a.config).pruning is None:
        extra.append(("pruning", {}))  # defaults: MAC-contribution rows of FC2, ratio 1/6
    return _study_on_checkpoint(a, ["digital", "pruned"], extra)


def cmd_diagnose(a) -> int:
    """The headline with each non-ideality alone on and alone off: table, chart, records."""
    from .diagnose.target import command
    print(command(a.target, a.task, a.out, a.times, a.repeats, a.config, a.glue_dir, a.overrides,
                  progress=not a.no_progress, effects=a.effects))
    return 0


def cmd_sensitivity(a) -> int:
    """The headline with one layer at a time noisy; heat-map, ranked table, mixed mapping."""
    from .sensitivity.command import command
    print(command(a.target, a.task, a.out, a.config, a.glue_dir, a.overrides, progress=not a.no_progress,
                  modes=a.modes, std=a.std, t_seconds=a.time, repeats=a.repeats, layers=a.layers,
                  digital_layers=False if a.analog_only else None, mixed_k=a.mixed_k, mixed_mode=a.mixed_mode))
    return 0


def cmd_map(a) -> int:
    from .hardware.mapping import MappingConfig, map_model
    from .report.figures import plot_tile_layout
    hf_config = _load_hf_config(a.model)
    mcfg = MappingConfig(tile_rows=a.tile_rows, tile_cols=a.tile_cols, row_policy=a.policy,
                         col_policy=a.policy, fuse_qkv=a.fuse_qkv)
    tm = map_model(hf_config, mcfg)
    print(tm.to_markdown())
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tiles.md").write_text(tm.to_markdown())
        tm.to_csv(str(out / "tiles.csv"))
        plot_tile_layout(tm, str(out / "tiles.png"))
        print(f"wrote {out / 'tiles.md'}, {out / 'tiles.csv'}, {out / 'tiles.png'}")
    return 0


PRESET_CONFIGS = {
    "bert-base": ("BertConfig", {}),
    "albert-base": ("AlbertConfig", dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
    "distilbert": ("DistilBertConfig", {}),
    "mobilebert": ("MobileBertConfig", {}),
    "gpt2": ("GPT2Config", {}),
    "distilgpt2": ("GPT2Config", dict(n_layer=6)),
    "minilm": (None, {}),
}


def _load_hf_config(name: str):
    """An HF config from a preset name, a local folder/config.json, or a hub name."""
    import transformers
    if name in PRESET_CONFIGS:
        cls, kw = PRESET_CONFIGS[name]
        if cls is None:
            from .tasks.registry import default_model_path
            return transformers.AutoConfig.from_pretrained(default_model_path())
        return getattr(transformers, cls)(**kw)
    p = Path(name)
    source = str(p.parent) if p.is_file() else name
    try:
        return transformers.AutoConfig.from_pretrained(source)
    except Exception as e:  # a broken config.json, an unknown name, the hub unreachable
        where = f"{p}" if p.exists() else f"{name!r} (not a local path; the hub name did not load)"
        first = (str(e).splitlines() or [""])[0][:300]
        raise ValueError(f"cannot read a model config from {where}: {type(e).__name__}: {first.rstrip('.')}. Use a "
                         f"folder with a valid config.json, or a preset: {sorted(PRESET_CONFIGS)}") from None


def cmd_report(a) -> int:
    from .report import build_report
    print(build_report(Path(a.dir)))
    return 0


def cmd_merge(a) -> int:
    from .study.merge import merge_studies
    print(merge_studies(a.sources, a.out))
    return 0


def cmd_demo(a) -> int:
    """One real MiniLM matrix on PCM tiles: its output error over time, by source."""
    from .demo import run
    print(run())
    return 0


def _condition_names() -> List[str]:
    from .study.sweep import CONDITIONS
    return list(CONDITIONS)


def _effect_names() -> List[str]:
    from .diagnose.effects import EFFECTS
    return list(EFFECTS)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown; lines never broken inside a hyphenated name (analog-nocomp, hwa-int8)."""

    def _split_lines(self, text, width):
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="analogformer", epilog=EPILOG,
                                description="Transformers on simulated PCM analog in-memory-computing tiles.")
    p.add_argument("--version", action="version", version=f"analogformer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    fmt = _HelpFormatter
    s = sub.add_parser("study", help="run (or resume) a study from a YAML config", formatter_class=fmt,
                       description="Fine-tune, analogize and evaluate over time as CONFIG describes; "
                                   "re-running the same command continues an interrupted study.",
                       epilog="Any config key can be set with --set KEY=VALUE, e.g. --set analog.tile.rows=512 "
                              "(the default; SPEC 512x512 tiles), --set sweep.repeats=25, --set "
                              "'conditions=[digital, analog, hwa]'. Conditions: "
                              + ", ".join(_condition_names()) + ". Every key: docs/config.md.")
    s.add_argument("config", help="study YAML (see configs/)")
    s.add_argument("--out", help="output folder (default: the config's output_dir)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    s.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="evaluate the sweep as Ray tasks (pip install 'analogformer[ray]'): local = a Ray "
                        "instance of this process, auto = the cluster of `ray start --head` on this machine, "
                        "HOST:PORT = that cluster; the records are those of a local run (docs/ray.md)")
    _add_set(s)
    s.set_defaults(func=cmd_study)

    e = sub.add_parser("evaluate", help="evaluate a saved fine-tuned model over time on PCM tiles",
                       formatter_class=fmt)
    e.add_argument("checkpoint", help="folder of a model fine-tuned for the task (save_pretrained)")
    e.add_argument("--task", required=True, help="registered task, e.g. sst2, mrpc, rte")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--config", help="study YAML for analog/sweep settings (optional)")
    e.add_argument("--glue-dir", help="local GLUE folder (default: the config's data.glue_dir)")
    e.add_argument("--conditions", default="digital,analog-nocomp,analog",
                   help=f"comma-separated conditions, of: {', '.join(_condition_names())}")
    e.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    _add_set(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("prune", help="prune a fine-tuned model, retrain with masks, compact, evaluate",
                        formatter_class=fmt)
    pr.add_argument("checkpoint", help="folder of a model fine-tuned for the task (save_pretrained)")
    pr.add_argument("--task", required=True, help="registered task, e.g. sst2, mrpc, rte")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--config", help="study YAML whose `pruning:` section to use (optional)")
    pr.add_argument("--glue-dir", help="local GLUE folder (default: the config's data.glue_dir)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    _add_set(pr)
    pr.set_defaults(func=cmd_prune)

    dg = sub.add_parser("diagnose", help="which non-ideality costs how much: the headline with each one alone on "
                                         "and alone off, a table and a bar chart", formatter_class=fmt,
                        description="Evaluate a model on tiles with every non-ideality of its analog config (DAC, "
                                    "ADC, output noise, programming noise, drift, read noise, compensation, ...) "
                                    "alone on and alone off, over device instances; writes diagnosis.md, "
                                    "diagnosis.png and diagnosis.jsonl to --out. Re-running resumes.",
                        epilog="See docs/diagnose.md for what each row means.")
    dg.add_argument("target", help="a study YAML (its model, task, data and analog config; its fine-tuned "
                                   "checkpoints/<task>/digital if the study made one) or a saved model folder "
                                   "fine-tuned for --task")
    dg.add_argument("--task", help="registered task, e.g. sst2; needed with a model folder (a study YAML: its task)")
    dg.add_argument("--out", help="output folder; needed with a model folder (a study YAML: <output_dir>/diagnosis/<task>)")
    dg.add_argument("--times", default="1,2592000", help="comma-separated seconds since programming")
    dg.add_argument("--repeats", type=int, default=4, help="device instances per programmed row and time point")
    dg.add_argument("--effects", help=f"comma-separated non-idealities to switch, of: {', '.join(_effect_names())}; "
                                      "not given = all")
    dg.add_argument("--config", help="study YAML for analog/data settings when TARGET is a model folder (optional)")
    dg.add_argument("--glue-dir", help="local GLUE folder (default: the config's data.glue_dir)")
    dg.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    _add_set(dg)
    dg.set_defaults(func=cmd_diagnose)

    se = sub.add_parser("sensitivity", help="per-layer noise sensitivity: the headline with one layer at a time "
                                            "noisy, a heat-map, a ranked table, and the mixed mapping",
                        formatter_class=fmt,
                        description="For each analog matrix (and the embeddings and output head, which stay "
                                    "digital by default), the headline when only that layer is noisy: white noise "
                                    "on its weights or outputs, or the tile model on it alone at a chosen time, over "
                                    "device instances; per-layer weight statistics and their rank correlation with "
                                    "the drop; with --mixed-k, the metric and tiles when the k most sensitive "
                                    "matrices stay digital. Settings come from the YAML's `sensitivity:` section; "
                                    "these options override it. Writes sensitivity.md, sensitivity.png, "
                                    "mixed_mapping.png and sensitivity.jsonl to --out; re-running resumes.",
                        epilog="See docs/sensitivity.md.")
    se.add_argument("target", help="a study YAML (its model, task, data and analog config; its fine-tuned "
                                   "checkpoints/<task>/digital if the study made one) or a saved model folder "
                                   "fine-tuned for --task")
    se.add_argument("--task", help="registered task, e.g. sst2; needed with a model folder (a study YAML: its task)")
    se.add_argument("--out", help="output folder; needed with a model folder (a study YAML: "
                                  "<output_dir>/sensitivity/<task>)")
    se.add_argument("--modes", help="comma-separated modes, of: weights, weights-absolute, outputs, outputs-absolute, "
                                    "tiles (default: the YAML's, else weights,tiles)")
    se.add_argument("--std", type=float, help="std of the white-noise modes: × max|W| (weights), × rms (outputs), "
                                              "or absolute for the -absolute modes (default: the YAML's, else 0.1)")
    se.add_argument("--time", type=float, help="seconds since programming of the tiles mode and the mixed mapping "
                                               "(default: the YAML's, else 2592000 = 1 month)")
    se.add_argument("--repeats", type=int, help="device instances / noise draws per layer and mode "
                                                "(default: the YAML's, else 5)")
    se.add_argument("--layers", help="regex on module names: perturb only the layers it matches (default: all)")
    se.add_argument("--analog-only", action="store_true",
                    help="perturb only the analog matrices (not the embeddings, head and pooler)")
    se.add_argument("--mixed-k", help="comma-separated k: keep the k most sensitive analog matrices digital and "
                                      "evaluate the rest on tiles, e.g. 0,1,2,4,8 (default: the YAML's, else none)")
    se.add_argument("--mixed-mode", help="the mode whose ranking picks the matrices kept digital (default: the "
                                         "YAML's, else tiles when measured, else the first mode)")
    se.add_argument("--config", help="study YAML for analog/data settings when TARGET is a model folder (optional)")
    se.add_argument("--glue-dir", help="local GLUE folder (default: the config's data.glue_dir)")
    se.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    _add_set(se)
    se.set_defaults(func=cmd_sensitivity)

    m = sub.add_parser("map", help="tile mapping of any HF model config (no weights needed)", formatter_class=fmt)
    m.add_argument("model", help=f"preset ({', '.join(PRESET_CONFIGS)}), a folder with config.json, or a hub name")
    m.add_argument("--tile-rows", type=int, default=512, help="crossbar rows (inputs) per tile")
    m.add_argument("--tile-cols", type=int, default=512, help="crossbar columns (outputs) per tile")
    m.add_argument("--policy", choices=["balanced", "fill_first"], default="balanced",
                   help="how a matrix larger than a tile is split: equal parts, or full tiles first")
    m.add_argument("--fuse-qkv", action="store_true", help="map Q/K/V as one in-projection matrix")
    m.add_argument("--out", help="folder for tiles.md / tiles.csv / tiles.png")
    m.set_defaults(func=cmd_map)

    r = sub.add_parser("report", help="rebuild report.md / report.html / plots from a study folder")
    r.add_argument("dir", help="study output folder (holds results.jsonl)")
    r.set_defaults(func=cmd_report)

    g = sub.add_parser("merge", help="merge study folders that ran parts of one study (e.g. one task each)")
    g.add_argument("sources", nargs="+", help="study folders (same config up to tasks / conditions / times / repeats)")
    g.add_argument("--out", required=True, help="new folder for the merged study (report rebuilt there)")
    g.set_defaults(func=cmd_merge)

    d = sub.add_parser("demo", help="one real MiniLM matrix on PCM tiles: its output error over time, "
                                    "with and without drift compensation, and where it comes from")
    d.set_defaults(func=cmd_demo)
    return p


def _quiet_progress() -> None:
    """--no-progress: no bars from analogformer (tqdm), transformers or the HF hub either."""
    import transformers
    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "command", None):
        parser.print_help()
        return 2
    from .runtime import tune_allocator
    tune_allocator()  # big temporaries from a warm heap, not fresh mmaps (see runtime.py)
    try:
        if getattr(a, "no_progress", False):
            _quiet_progress()
        return a.func(a)
    except (ValueError, FloatingPointError) as e:  # bad input; a non-finite loss, output or checkpoint
        print(f"analogformer {a.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder that cannot be read or written
        what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        print(f"analogformer {a.command}: error: {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
