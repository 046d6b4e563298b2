"""The pruning step of `analogformer study` end to end on a tiny random BERT and a tiny GLUE
folder: methods, ratios, baselines, schedules, refit, retraining seeds; its config errors."""
import re

import pytest
import torch

from analogformer.cli import main
from analogformer.config import from_dict
from analogformer.study.config import StudyConfig
from study_fixtures import _config, _records, setup  # noqa: F401 (fixture)


def test_pruning_step_in_study(setup):
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned"],
                       pruning={"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"],
                                          "ratio": 0.25},
                                # retrained with the dense model as (layer-wise) distillation teacher,
                                # also on token-replaced copies of the batches, keeping a weight average
                                "calibration_batches": 2, "retrain": {"epochs": 1, "distill_hidden_weight": 1.0,
                                                                      "augment_prob": 0.3, "ema_decay": 0.9}})
    out = root / "out_prune"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    stages = {r["stage"]: r for r in recs if "stage" in r}
    assert set(stages) == {"dense", "pruned", "retrained"}
    assert stages["pruned"]["prune_ratio"] == 0.25 and stages["dense"]["prune_ratio"] == 0.0
    assert stages["retrained"]["condition"] == "prune-mac-rows:retrained"
    assert stages["retrained"]["ema_decay"] == 0.9 and "ema_decay" not in stages["pruned"]
    assert "exponential moving average over the retraining steps (`ema_decay` 0.9)" in (out / "report.md").read_text()
    assert len([r for r in recs if r["condition"] == "pruned"]) == 2 * 2
    from analogformer.pruning import load_compacted
    pruned = load_compacted(str(out / "checkpoints" / "sst2" / "pruned"))
    assert pruned.bert.encoder.layer[0].intermediate.dense.out_features == 48  # 64 − 25 %
    assert (out / "pruning_tiles_sst2.png").exists() and (out / "mac_delta_sst2.png").exists()


def test_pruning_ratios_and_baselines_in_one_study(setup):
    """Two ratios × (MAC + random + magnitude rows): dense/pruned/retrained records per method
    and ratio, one compacted model per ratio on tiles as "pruned@<ratio>", resumable."""
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned"],
                       pruning={"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"]},
                                "ratios": [0.25, 0.5], "baselines": [{"criterion": "random"},
                                                                     {"criterion": "magnitude"}],
                                "calibration_batches": 2, "retrain": {"epochs": 1}},
                       sweep={"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2,
                              "eval_batch_size": 8, "times_per_condition": {"pruned": [2592000]}})
    out = root / "out_prune_grid"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    got = sorted((r["condition"], r["prune_ratio"]) for r in recs if "stage" in r)
    want = [("prune-magnitude-rows:pruned", x) for x in (0.25, 0.5)] + \
           [("prune-magnitude-rows:retrained", x) for x in (0.25, 0.5)] + \
           [("prune-mac-rows:pruned", x) for x in (0.25, 0.5)] + \
           [("prune-mac-rows:retrained", x) for x in (0.25, 0.5)] + \
           [("prune-random-rows:pruned", x) for x in (0.25, 0.5)] + \
           [("prune-random-rows:retrained", x) for x in (0.25, 0.5)] + [("prune:dense", 0.0)]
    assert got == sorted(want)
    # on tiles: only the main method, each ratio, only at 1 month (times_per_condition)
    tiles = sorted({(r["condition"], r["t_seconds"]) for r in recs if r["condition"].startswith("pruned")})
    assert tiles == [("pruned@0.25", 2592000.0), ("pruned@0.5", 2592000.0)]
    from analogformer.pruning import load_compacted
    for tag, width in (("0.25", 48), ("0.5", 32)):
        m = load_compacted(str(out / "checkpoints" / "sst2" / f"pruned@{tag}"))
        assert m.bert.encoder.layer[1].intermediate.dense.out_features == width
        assert (out / f"pruning_tiles_sst2@{tag}.md").exists()
    md = (out / "report.md").read_text()
    assert "| random-rows | 0.5 |" in md and "pruned@0.25" in md
    n = len(recs)
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0  # resume: nothing new
    assert len(_records(out)) == n


def test_gradual_pruning_keep_best_and_control_in_study(setup):
    """stages: 2 + keep_best on dev + the dense control: the retrained record is the best of
    its dev evaluations at the final ratio, the control is the dense model retrained."""
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned-digital"],
                       pruning={"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"],
                                          "ratio": 0.5},
                                "baselines": [{"criterion": "random"}], "stages": 2, "control": True,
                                "calibration_batches": 2,
                                "retrain": {"epochs": 2, "eval_every": 2, "keep_best": True}})
    out = root / "out_prune_gradual"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    by = {r["condition"]: r for r in recs if "stage" in r}
    assert set(by) == {"prune:dense", "prune-none:retrained", "prune-mac-rows:pruned",
                       "prune-mac-rows:retrained", "prune-random-rows:pruned", "prune-random-rows:retrained"}
    total = 2 * 6  # 96 training examples, batch 16, 2 epochs
    for method in ("mac-rows", "random-rows"):
        r = by[f"prune-{method}:retrained"]
        steps = [s for s, _ in r["dev_evals"]]
        assert steps == [6, 8, 10, 12]  # only at the final ratio: stage 2 starts after 6 of 12 steps
        assert r["headline"] == max(v for _, v in r["dev_evals"])
        assert r["best_step"] in steps
    control = by["prune-none:retrained"]
    assert control["prune_ratio"] == 0.0 and control["method"] == "none"
    assert [s for s, _ in control["dev_evals"]] == list(range(0, total + 1, 2))
    assert control["dev_evals"][0][1] == by["prune:dense"]["headline"]  # step 0 = the dense model
    assert control["headline"] == max(v for _, v in control["dev_evals"])
    pruned = [r for r in recs if r["condition"] == "pruned-digital"]
    assert pruned and pruned[0]["headline"] == by["prune-mac-rows:retrained"]["headline"]
    md = (out / "report.md").read_text()
    assert "| none | 0 |" in md


def test_least_squares_reconstruction_in_study(setup, capsys):
    """MAC rows with `reconstruct` beside the same method without it: an extra
    "reconstructed" stage between pruning and retraining, with per-matrix output errors,
    in the records and in the report table."""
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned-digital"],
                       pruning={"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"],
                                          "ratio": 0.5, "reconstruct": True},
                                "baselines": [{"reconstruct": False}, {"criterion": "obs"},
                                              {"criterion": "obs", "scope": "global"},
                                              {"criterion": "obs", "scope": "global", "tile_multiple": 16}],
                                "calibration_batches": 2, "retrain": {"epochs": 1}})
    out = root / "out_prune_ls"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    by = {r["condition"]: r for r in recs if "stage" in r}
    assert set(by) == {"prune:dense", "prune-mac-rows-ls:pruned", "prune-mac-rows-ls:reconstructed",
                       "prune-mac-rows-ls:retrained", "prune-mac-rows:pruned", "prune-mac-rows:retrained",
                       "prune-obs-rows-ls:pruned", "prune-obs-rows-ls:reconstructed",
                       "prune-obs-rows-ls:retrained",  # OBS rows (Gram statistics) as a baseline
                       "prune-obs-rows-global-ls:pruned", "prune-obs-rows-global-ls:reconstructed",
                       "prune-obs-rows-global-ls:retrained",
                       "prune-obs-rows-global-t16-ls:pruned", "prune-obs-rows-global-t16-ls:reconstructed",
                       "prune-obs-rows-global-t16-ls:retrained"}
    # the log says how the global scopes shared out the 64 of 128 FC2 rows; aligned: whole 16s
    kept = {m.group(1): [int(v) for v in m.group(2).split(",")] for m in re.finditer(
        r"(obs-rows-global(?:-t16)?-ls) ratio 0.500: rows kept per matrix: fc2 \[([0-9, ]+)\]",
        capsys.readouterr().out)}
    assert set(kept) == {"obs-rows-global-ls", "obs-rows-global-t16-ls"}
    assert all(sum(v) == 64 for v in kept.values())
    assert all(v % 16 == 0 for v in kept["obs-rows-global-t16-ls"])
    fit = by["prune-mac-rows-ls:reconstructed"]
    assert fit["stage"] == "reconstructed" and fit["prune_ratio"] == 0.5
    errs = fit["output_error"]
    assert set(errs) == {f"bert.encoder.layer.{i}.output.dense" for i in range(2)}
    assert all(after < before for before, after in errs.values())
    # OBS rows (their Gram statistics from the study's calibration): refit errors fall too
    obs_errs = by["prune-obs-rows-ls:reconstructed"]["output_error"]
    assert set(obs_errs) == set(errs) and all(after < before for before, after in obs_errs.values())
    # OBS global shares the block's rows out over the layers: refit errors fall as well
    glob = by["prune-obs-rows-global-ls:reconstructed"]["output_error"]
    assert set(glob) == set(errs) and all(after <= before for before, after in glob.values())
    # the same masks without the refit: identical "after pruning" scores
    assert by["prune-mac-rows:pruned"]["headline"] == by["prune-mac-rows-ls:pruned"]["headline"]
    md = (out / "report.md").read_text()
    assert "after LS refit" in md and "| mac-rows-ls | 0.5 |" in md


def test_admm_pruning_with_keep_best_selects_in_the_retraining_only(setup):
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned-digital"],
                       pruning={"prune": {"criterion": "l2", "structure": "rows", "blocks": ["fc2"],
                                          "ratio": 0.25, "admm_rho": 0.01, "admm_interval_steps": 2},
                                "calibration_batches": 2,
                                "retrain": {"epochs": 1, "eval_every": 3, "keep_best": True}})
    out = root / "out_prune_admm"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    r = next(r for r in _records(out) if r["condition"] == "prune-l2-rows-admm:retrained")
    assert [s for s, _ in r["dev_evals"]] == [0, 3, 6]
    assert r["headline"] == max(v for _, v in r["dev_evals"])


def test_several_retraining_seeds_in_study(setup):
    """retrain_seeds: 2 retrains every pruned model twice from the same pruned state: seed k's
    record equals a one-seed study with retrain.seed + k exactly, the report gives mean ± SEM,
    and the model on tiles is the first seed's."""
    root, glue, model_dir = setup

    def run(name, seeds, seed):
        pruning = {"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"], "ratio": 0.25},
                   "baselines": [{"criterion": "random"}], "calibration_batches": 2,
                   "retrain": {"epochs": 1, "seed": seed}, "retrain_seeds": seeds}
        cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned-digital"],
                           pruning=pruning)
        out = root / name
        assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
        return out, _records(out), cfg_path

    out, recs, cfg_path = run("out_seeds", 2, 3)
    retrained = {(r["condition"], r["repeat"]): r["headline"] for r in recs if r.get("stage") == "retrained"}
    assert set(retrained) == {(f"prune-{m}-rows:retrained", k) for m in ("mac", "random") for k in (0, 1)}
    for k in (0, 1):
        _, single, _ = run(f"out_seed{3 + k}", 1, 3 + k)
        one = {r["condition"]: r["headline"] for r in single if r.get("stage") == "retrained"}
        assert all(one[c] == retrained[(c, k)] for c in one)
    # the model on tiles is the first seed's, bit for bit; the second seed's weights differ
    from analogformer.pruning import load_compacted
    state = {n: load_compacted(str(root / n / "checkpoints" / "sst2" / "pruned")).state_dict()
             for n in ("out_seeds", "out_seed3", "out_seed4")}
    assert all(torch.equal(v, state["out_seed3"][k]) for k, v in state["out_seeds"].items())
    assert not all(torch.equal(v, state["out_seed4"][k]) for k, v in state["out_seeds"].items())
    on_tiles = next(r["headline"] for r in recs if r["condition"] == "pruned-digital")
    assert on_tiles == retrained[("prune-mac-rows:retrained", 0)]
    report = (out / "report.md").read_text()
    mean = 100 * (retrained[("prune-mac-rows:retrained", 0)] + retrained[("prune-mac-rows:retrained", 1)]) / 2
    row = next(l for l in report.splitlines() if l.startswith("| mac-rows |"))
    assert f"{mean:.2f} ±" in row and "mean ± SEM over the retraining seeds" in report
    # a finished one-seed study extended to two seeds adds exactly the second seed's records
    out3, _, _ = run("out_seed3", 2, 3)
    extended = {(r["condition"], r["repeat"]): r["headline"] for r in _records(out3) if r.get("stage") == "retrained"}
    assert extended == retrained
    # an interrupted run that lost the second seeds' records redoes exactly those
    lines = (out / "results.jsonl").read_text().splitlines()
    kept = [l for l in lines if not ('"repeat": 1' in l and "retrained" in l)]
    assert len(kept) == len(lines) - 2
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    again = {(r["condition"], r["repeat"]): r["headline"] for r in _records(out) if r.get("stage") == "retrained"}
    assert again == retrained


def test_progressive_pruning_in_study(setup, monkeypatch):
    """progressive: the second ratio starts from the first ratio's retrained model (first seed)
    and keeps its removed units; the first round equals a one-shot study; teacher and refit
    targets stay dense (one dense record); an interrupted second round is redone exactly,
    retraining the first round's first seed again without new records."""
    import analogformer.study.prune_step as sp
    root, glue, model_dir = setup
    calls = []
    real = sp._prune_retrain

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        calls.append((args[4], args[5], kwargs.get("start"), model.analogformer_masks))
        return model
    monkeypatch.setattr(sp, "_prune_retrain", spy)

    def run(name, **pruning):
        cfg = {"prune": {"criterion": "obs", "structure": "rows", "blocks": ["fc2"], "coupled_ffn": True,
                         "reconstruct": True, "scope": "global", "tile_multiple": 16},
               "baselines": [{"criterion": "magnitude"}], "calibration_batches": 2,
               "retrain": {"epochs": 1}, "retrain_seeds": 2, **pruning}
        cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned-digital"],
                           pruning=cfg)
        assert main(["study", str(cfg_path), "--out", str(root / name), "--no-progress"]) == 0
        return root / name, cfg_path

    out, cfg_path = run("out_prog", ratios=[0.25, 0.5], progressive=True)
    recs = _records(out)
    assert sum(r["condition"] == "prune:dense" for r in recs) == 1
    labels = {r["condition"].split(":")[0] for r in recs if r.get("stage") == "retrained"}
    assert labels == {"prune-obs-rows-global-t16-ls-prog", "prune-magnitude-rows-global-t16-ls-prog"}
    by = {(label, ratio): (start, masks) for label, ratio, start, masks in calls}
    for label in ("obs-rows-global-t16-ls-prog", "magnitude-rows-global-t16-ls-prog"):
        first_start, first = by[(label, 0.25)]
        start, second = by[(label, 0.5)]
        assert first_start is None and start[1] is first  # round 2 starts from round 1's masks
        for name, m in first.weight.items():   # nested: removed in round 1 -> removed in round 2
            assert not (second.weight[name] & ~m).any()
        removed = {n: int((~m.any(0)).sum()) for n, m in second.weight.items() if n.endswith("output.dense")}
        assert sum(removed.values()) == 64 and all(v % 16 == 0 for v in removed.values())
    # round 1 is plain one-shot pruning: the same records as a one-shot study at that ratio
    calls.clear()
    one, _ = run("out_prog_oneshot", ratios=[0.25])
    oneshot = {(r["condition"].replace("-ls:", "-ls-prog:"), r["repeat"]): r["headline"]
               for r in _records(one) if r.get("stage") in ("pruned", "reconstructed", "retrained")}
    prog = {(r["condition"], r["repeat"]): r["headline"] for r in recs
            if r.get("stage") in ("pruned", "reconstructed", "retrained") and r.get("prune_ratio") == 0.25}
    assert prog == oneshot
    report = (out / "report.md").read_text()
    assert "-prog = pruned in rounds" in report and "| obs-rows-global-t16-ls-prog | 0.5 |" in report
    # interrupted in round 2: its records and model lost -> redone exactly
    second_round = {(r["condition"], r["repeat"]): r["headline"] for r in recs if r.get("prune_ratio") == 0.5}
    lines = (out / "results.jsonl").read_text().splitlines()
    kept = [l for l in lines if '"prune_ratio": 0.5' not in l and "pruned@0.5" not in l]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    import shutil
    shutil.rmtree(out / "checkpoints" / "sst2" / "pruned@0.5")
    calls.clear()
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    again = _records(out)
    assert {(r["condition"], r["repeat"]): r["headline"] for r in again if r.get("prune_ratio") == 0.5} == second_round
    assert len(again) == len(recs)
    assert [(c[0], c[1]) for c in calls] == [(l, r) for r in (0.25, 0.5) for l in
                                               ("obs-rows-global-t16-ls-prog", "magnitude-rows-global-t16-ls-prog")]
    calls.clear()
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0  # finished: nothing redone
    assert calls == [] and len(_records(out)) == len(recs)
    # round_seeds: 1 -> one seed before the last round, the same chain (round 2 starts from the
    # first seed either way); raising it later retrains only the missing seed of round 1
    full = {(r["condition"], r["repeat"], r["prune_ratio"]): r["headline"] for r in recs if r.get("stage")}
    calls.clear()
    few, few_cfg = run("out_prog_few", ratios=[0.25, 0.5], progressive=True, round_seeds=1)
    got = {(r["condition"], r["repeat"], r["prune_ratio"]): r["headline"] for r in _records(few) if r.get("stage")}
    assert set(full) - set(got) == {(c, 1, 0.25) for c, k, r in full if r == 0.25 and c.endswith(":retrained")}
    assert all(full[k] == v for k, v in got.items())
    assert "| obs-rows-global-t16-ls-prog | 0.25 |" in (few / "report.md").read_text()
    text = few_cfg.read_text().replace("round_seeds: 1", "round_seeds: 2")
    assert text != few_cfg.read_text()
    few_cfg.write_text(text)
    calls.clear()
    assert main(["study", str(few_cfg), "--out", str(few), "--no-progress"]) == 0
    assert [(c[0], c[1]) for c in calls] == [(l, 0.25) for l in
                                               ("obs-rows-global-t16-ls-prog", "magnitude-rows-global-t16-ls-prog")]
    got = {(r["condition"], r["repeat"], r["prune_ratio"]): r["headline"] for r in _records(few) if r.get("stage")}
    assert got == full


def test_pruning_study_config_errors():
    base = {"tasks": ["sst2"], "conditions": ["digital", "pruned"]}
    for bad, msg in ((({"ratios": [0.2, 0.2]}), "repeats a ratio"), ({"ratios": [1.5]}, "ratio"),
                     ({"stages": 0}, "stages"), ({"control": "yes"}, "control"),
                     ({"stages": 2, "prune": {"criterion": "l1", "admm_rho": 0.01}}, "ADMM"),
                     ({"baselines": [{"criterion": "mac"}]}, "same"),
                     ({"baselines": [{"ratio": 0.1}]}, "not per baseline"),
                     ({"baselines": {"criterion": "random"}}, "pruning.baselines"),
                     ({"retrain_seeds": 0}, "retrain_seeds"),
                     ({"retrain_seeds": 2, "stages": 2}, "retrain_seeds.*one-shot pruning"),
                     ({"stages": 2, "retrain": {"ema_decay": 0.9}}, "retrain.ema_decay.*masks that stay fixed"),
                     ({"progressive": True}, "progressive.*at least two"),
                     ({"progressive": True, "ratios": [0.3]}, "progressive.*at least two"),
                     ({"progressive": True, "ratios": [0.3, 0.1]}, "progressive.*increasing order"),
                     ({"progressive": True, "ratios": [0.1, 0.3], "stages": 2}, "progressive.*gradual"),
                     ({"progressive": "yes", "ratios": [0.1, 0.3]}, "pruning.progressive.*bool"),
                     ({"round_seeds": 1, "ratios": [0.1, 0.3]}, "round_seeds.*progressive: true"),
                     ({"round_seeds": 0, "progressive": True, "ratios": [0.1, 0.3]}, "round_seeds")):
        with pytest.raises(ValueError, match=msg):
            from_dict(StudyConfig, {**base, "pruning": bad})
    # the retraining recipe inherits `finetune`: an average set there is refused too
    with pytest.raises(ValueError, match=r"pruning\.retrain\.ema_decay: 0\.9 for 'sst2'.*masks that stay fixed"):
        from_dict(StudyConfig, {**base, "finetune": {"ema_decay": 0.9}, "pruning": {"stages": 2}})


# ------------------------------------------------------------------ config

def test_evaluate_and_prune_commands_on_a_saved_checkpoint(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    # a fine-tuned checkpoint: the digital model of a one-task study
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital"])
    src = root / "out_src"
    assert main(["study", str(cfg_path), "--out", str(src), "--no-progress"]) == 0
    ckpt = src / "checkpoints" / "sst2" / "digital"
    base = ["--task", "sst2", "--glue-dir", str(glue), "--no-progress", "--set", "sweep.repeats=2",
            "--set", "sweep.times_seconds=[1, 86400]", "--set", "analog.tile={rows: 16, cols: 16}",
            "--set", "sweep.eval_batch_size=8"]
    out = tmp_path / "eval"
    assert main(["evaluate", str(ckpt), "--out", str(out)] + base) == 0
    recs = _records(out)
    assert len(recs) == 1 + 2 * 2 * 2  # digital + (nocomp, analog) x 2 times x 2 repeats
    digital = next(r for r in recs if r["condition"] == "digital")
    assert digital["headline"] == _records(src)[0]["headline"]  # the very checkpoint, not retrained
    out = tmp_path / "prune"
    assert main(["prune", str(ckpt), "--out", str(out), "--set", "pruning.prune.ratio=0.25",
                 "--set", "pruning.calibration_batches=2", "--set", "pruning.retrain={epochs: 1}"] + base) == 0
    stages = {r["stage"] for r in _records(out) if "stage" in r}
    assert stages == {"dense", "pruned", "retrained"}
    assert main(["evaluate", str(root / "nope"), "--task", "sst2", "--out", str(tmp_path / "x")]) == 2
    assert "not a saved model folder" in capsys.readouterr().err


def test_prune_fidelity_example_reproduces_the_study_records(setup, capsys):
    """examples/prune_fidelity.py: the dense model agrees with itself (KL 0); the saved pruned
    checkpoint and the one-shot masked / refit models give exactly the study's metrics."""
    import importlib.util
    from pathlib import Path
    root, glue, model_dir = setup
    spec = importlib.util.spec_from_file_location(
        "prune_fidelity", Path(__file__).parents[2] / "examples" / "prune_fidelity.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pruning = {"prune": {"criterion": "mac", "structure": "rows", "blocks": ["fc2"], "ratio": 0.25,
                         "reconstruct": True},
               "calibration_batches": 2, "retrain": {"epochs": 1}}
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "pruned-digital"],
                       pruning=pruning)
    out = root / "out_fidelity"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    stage = {r["stage"]: r["headline"] for r in _records(out) if "stage" in r}
    rows = dict(example.main([str(cfg_path), "--task", "sst2", "--dense",
                              str(out / "checkpoints" / "sst2" / "digital"),
                              "--pruned", str(out / "checkpoints" / "sst2" / "pruned"), "--oneshot"]))
    assert rows["dense"]["agree"] == 1.0 and abs(rows["dense"]["kl"]) < 1e-12
    assert rows["dense"]["metric"] == pytest.approx(100 * stage["dense"], abs=1e-9)
    pruned = rows[str(out / "checkpoints" / "sst2" / "pruned")]
    assert pruned["metric"] == pytest.approx(100 * stage["retrained"], abs=1e-9)
    masked = next(v for k, v in rows.items() if k.endswith("masked"))
    refit = next(v for k, v in rows.items() if k.endswith("refit"))
    assert masked["metric"] == pytest.approx(100 * stage["pruned"], abs=1e-9)
    assert refit["metric"] == pytest.approx(100 * stage["reconstructed"], abs=1e-9)
    assert refit["kl"] < masked["kl"]  # the refit moves the pruned model towards the dense one
    assert "agreement with the dense model" in capsys.readouterr().out
    # progressive rounds retrain between ratios: --oneshot refuses rather than mislabel
    with pytest.raises(SystemExit, match="progressive rounds retrain between ratios"):
        example.main([str(cfg_path), "--task", "sst2", "--dense", str(out / "checkpoints" / "sst2" / "digital"),
                      "--oneshot", "--set", "pruning.progressive=true", "--set", "pruning.ratios=[0.25, 0.5]"])
