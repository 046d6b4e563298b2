"""End-to-end `analogformer study` on a tiny random BERT and a tiny GLUE folder; config
validation and round trip; resume after interruption."""
import json

import pytest
import torch
import yaml

from analogformer.cli import main
from analogformer.config import from_dict, to_dict
from analogformer.study.config import StudyConfig, load_study_config
from study_fixtures import _config, _records, setup  # noqa: F401 (fixture)


def test_study_end_to_end_and_resume(setup):
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir)
    out = root / "out"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    # per task: 1 digital + 3 analog conditions × 2 times × 2 repeats
    assert len(recs) == 2 * (1 + 3 * 2 * 2)
    keys = {(r["task"], r["condition"], r["t_seconds"], r["repeat"]) for r in recs}
    assert len(keys) == len(recs)
    assert ("mrpc", "analog", 2592000.0, 1) in keys and ("sst2", "digital", None, 0) in keys
    mrpc = next(r for r in recs if r["task"] == "mrpc")
    assert set(mrpc["metrics"]) == {"accuracy", "f1", "acc_and_f1"}
    # the toy task is learnable: the digital model is well above chance
    assert next(r for r in recs if r["task"] == "sst2" and r["condition"] == "digital")["headline"] >= 0.75
    for f in ("results.json", "report.md", "report.html", "metric_vs_time_sst2.png",
              "metric_vs_time_mrpc.png", "tiles.png", "config.yaml", "environment.json"):
        assert (out / f).exists(), f
    assert len(json.loads((out / "results.json").read_text())) == len(recs)
    assert "SST-2" in (out / "report.md").read_text()

    # interrupt: drop the last 5 records and leave a half-written line; re-run continues
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])
    with pytest.warns(UserWarning, match="truncated"):
        assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    again = _records(out)
    assert len(again) == len(recs)
    # seeded per (repeat, time, condition): the re-done records are bit-identical
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in recs)


def test_rerun_with_different_config_is_refused(setup, capsys):
    root, glue, model_dir = setup
    out = root / "out2"
    out.mkdir()
    (out / "config.yaml").write_text("tasks: [rte]\n")
    (out / "checkpoints" / "rte" / "digital").mkdir(parents=True)  # a run produced something here
    assert main(["study", str(_config(root, glue, model_dir)), "--out", str(out)]) == 2
    assert "different config" in capsys.readouterr().err


def test_a_failed_first_run_does_not_lock_the_folder_against_the_corrected_config(setup, capsys):
    root, glue, model_dir = setup
    out = root / "out-failed-first"
    bad = _config(root, glue, root / "no-such-model")
    assert main(["study", str(bad), "--out", str(out), "--no-progress"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert (out / "config.yaml").is_file() and not (out / "results.jsonl").exists()
    good = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital"],
                   sweep={"times_seconds": [1], "repeats": 1, "calibration_batches": 1, "eval_batch_size": 8})
    assert main(["study", str(good), "--out", str(out), "--no-progress"]) == 0
    assert "no-such-model" not in (out / "config.yaml").read_text()


def test_a_study_can_be_extended_and_gives_the_records_of_a_fresh_run(setup):
    """Adding tasks, conditions, time points and repeats to a finished study computes only
    what is missing, and the result equals a study run with the larger config from scratch."""
    root, glue, model_dir = setup
    small = dict(tasks=["sst2"], conditions=["digital", "analog"],
                 sweep={"times_seconds": [2592000], "repeats": 1, "calibration_batches": 2,
                        "eval_batch_size": 8})
    big = dict(tasks=["sst2", "mrpc"], conditions=["digital", "analog", "analog-gamma0.5"],
               sweep={"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2,
                      "eval_batch_size": 8})
    out, fresh = root / "out_extend", root / "out_extend_fresh"
    assert main(["study", str(_config(root, glue, model_dir, **small)), "--out", str(out), "--no-progress"]) == 0
    first = _records(out)
    assert main(["study", str(_config(root, glue, model_dir, **big)), "--out", str(out), "--no-progress"]) == 0
    assert main(["study", str(_config(root, glue, model_dir, **big)), "--out", str(fresh), "--no-progress"]) == 0
    extended = _records(out)
    assert extended[:len(first)] == first and len(extended) == 2 * (1 + 2 * 2 * 2)
    canon = lambda recs: sorted(json.dumps(r, sort_keys=True) for r in recs)
    assert canon(extended) == canon(_records(fresh))
    # shrinking is a change: the report would silently mix two studies
    shrunk = dict(big, sweep=dict(big["sweep"], repeats=1))
    assert main(["study", str(_config(root, glue, model_dir, **shrunk)), "--out", str(out), "--no-progress"]) == 2


def test_output_dir_of_an_older_version_is_resumable(tmp_path):
    """A config.yaml written before an option existed (key absent) still matches; a
    changed value does not."""
    from analogformer.study.config import dump_study_config
    from analogformer.study.pipeline import check_output_dir
    cfg = load_study_config(None, ["tasks=[sst2]"])
    old = yaml.safe_load(dump_study_config(cfg))
    del old["sweep"]["times_per_condition"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    (tmp_path / "checkpoints" / "sst2" / "digital").mkdir(parents=True)  # the folder holds results
    check_output_dir(tmp_path, cfg)  # accepted, and rewritten in the new form
    assert "times_per_condition" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"sweep.repeats"):
        check_output_dir(tmp_path, load_study_config(None, ["tasks=[sst2]", "sweep.repeats=3"]))
    old = yaml.safe_load(dump_study_config(cfg))
    old["sweep"]["gone_option"] = 1  # a key the new version no longer has is a change
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ValueError, match=r"sweep.gone_option: removed"):
        check_output_dir(tmp_path, cfg)


def test_config_round_trip_yaml():
    cfg = load_study_config(None, ["analog.adc.bits=8", "sweep.repeats=3", "tasks=[sst2, rte]",
                                   "finetune_per_task={rte: {epochs: 5}}"])
    data = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    back = from_dict(StudyConfig, data)
    assert to_dict(back) == to_dict(cfg)
    assert back.analog.adc.bits == 8 and back.sweep.repeats == 3 and back.tasks == ("sst2", "rte")
    assert back.finetune_for("rte").epochs == 5 and back.finetune_for("sst2").epochs == 3


@pytest.mark.parametrize("override, message", [
    ("analog.adc.bitz=8", r"analog\.adc: unknown key\(s\) \['bitz'\]; allowed: \['bits', 'bound'"),
    ("analog.adc.bits=0", r"ADCConfig\.bits: must be > 0"),
    ("analog.tile.rows=0", r"TileConfig\.rows: must be > 0"),
    ("select_repeats=0", r"StudyConfig\.select_repeats: must be > 0"),
    ("sweep.repeats=two", r"sweep\.repeats: expected int, got str"),
    ("sweep.times_seconds=[-1]", r"times must be finite and >= 0"),
    ("tasks=[wnli]", r"StudyConfig\.tasks"),
    ("conditions=[analog, magic]", r"unknown condition 'magic'; allowed"),
    ("conditions=[hwa]", r"needs an `hwa:` section"),
    ("best_of=0", r"best_of"),
    ("finetune.learning_rate=-1", r"learning_rate"),
    ("finetune.augment_prob=0.3", r"augment_prob=0.3 for 'sst2': the digital fine-tune has no teacher"),
    ("finetune_per_task={sst2: {distill_weight: 0.5}}", r"distill_weight=0.5 for 'sst2'.*pruning.retrain"),
    ("finetune_per_task={sst2: {epochz: 1}}", r"finetune_per_task\.sst2: unknown key"),
    ("pruning={retrain: {ema_decay: 1.5}}", r"pruning\.retrain: ema_decay must be in \(0, 1\)"),
    ("pruning={retrain: {learnin_rate: 1e-5}}", r"pruning\.retrain: unknown key\(s\) \['learnin_rate'\]"),
    ("hwa={finetune: {epochs: 0}}", r"hwa\.finetune: epochs must be an int >= 1"),
    ("analog.tile.split_policy=random", r"split_policy: must be one of \['balanced', 'fill_first'\]"),
    ("mystery=1", r"unknown key\(s\) \['mystery'\]"),
    ("analog.adc=5", r"analog\.adc: expected ADCConfig"),
])
def test_bad_config_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_study_config(None, [override])


def test_bad_yaml_file_errors(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("tasks: [sst2\n")
    assert main(["study", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_map_command_counts_bert_base(tmp_path, capsys):
    assert main(["map", "bert-base", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    # BERT-base: per layer Q,K,V,O 768x768 -> 2x2 tiles each, FC1/FC2 768x3072 -> 2x6 each: 40 x 12
    assert "480" in text
    assert (tmp_path / "tiles.png").stat().st_size > 1000


def test_hwa_and_int6_attention_conditions_in_study(setup):
    root, glue, model_dir = setup
    cfg_path = _config(root, glue, model_dir, tasks=["sst2"],
                       conditions=["digital", "hwa-digital", "hwa", "hwa-int6"],
                       hwa={"finetune": {"epochs": 2, "distill_weight": 0.5}, "recipe": {"weight_noise": "pcm", "clip": "sigma",
                                                                   "clip_sigma": 2.5, "input_range_batches": 2}},
                       sweep={"times_seconds": [2592000], "repeats": 2, "calibration_batches": 2,
                              "eval_batch_size": 8})
    out = root / "out_hwa"
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    assert sorted({r["condition"] for r in recs}) == ["digital", "hwa", "hwa-digital", "hwa-int6"]
    assert [r["attention_bits"] for r in recs if r["condition"] == "hwa-int6"] == [6, 6]
    ranges = json.loads((out / "checkpoints" / "sst2" / "hwa" / "input_ranges.json").read_text())
    assert len(ranges) == 2 * 6 and all(v > 0 for v in ranges.values())
    # sigma clipping held through training: every saved weight within 2.5 std of its layer
    from safetensors.torch import load_file
    sd = load_file(str(out / "checkpoints" / "sst2" / "hwa" / "model.safetensors"))
    w = sd["bert.encoder.layer.0.intermediate.dense.weight"]
    assert w.abs().max() <= 2.5 * w.std() * 1.05
    # resume that redoes only the INT6 group, with the global RNG elsewhere (as in a fresh
    # process): the attention and DAC calibration are seeded per group -> identical records
    int6 = sorted(json.dumps(r, sort_keys=True) for r in recs if r["condition"] == "hwa-int6")
    lines = [l for l in (out / "results.jsonl").read_text().splitlines() if '"hwa-int6"' not in l]
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    torch.manual_seed(987)
    torch.randn(1000)
    assert main(["study", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    assert sorted(json.dumps(r, sort_keys=True) for r in _records(out) if r["condition"] == "hwa-int6") == int6


def test_best_of_seeds_keeps_the_best_candidate(setup):
    """best_of: 2 trains two digital and two HWA candidates (seeds +0, +1) and keeps the one
    with the best dev score (HWA: on tiles); candidate 0 is the best_of: 1 model."""
    root, glue, model_dir = setup
    common = dict(tasks=["sst2"], conditions=["digital", "hwa"],
                  finetune={"epochs": 2, "batch_size": 16, "learning_rate": 5e-3},
                  hwa={"finetune": {"epochs": 1}, "recipe": {"input_range_batches": 2}},
                  sweep={"times_seconds": [86400], "repeats": 1, "calibration_batches": 2,
                         "eval_batch_size": 8})
    out = root / "out_best_of"
    assert main(["study", str(_config(root, glue, model_dir, best_of=2, **common)), "--out", str(out),
                 "--no-progress"]) == 0
    recs = _records(out)
    for step in ("digital", "hwa"):
        cands = json.loads((out / "checkpoints" / "sst2" / step / "candidates.json").read_text())
        scores = [c["dev_score"] for c in cands["candidates"]]
        assert [c["seed_offset"] for c in cands["candidates"]] == [0, 1]
        assert scores[cands["chosen"]] == max(scores) and cands["chosen"] == scores.index(max(scores))
    digital = next(r for r in recs if r["condition"] == "digital")
    assert digital["headline"] == max(c["dev_score"] for c in json.loads(
        (out / "checkpoints" / "sst2" / "digital" / "candidates.json").read_text())["candidates"])
    single = root / "out_best_of_1"
    assert main(["study", str(_config(root, glue, model_dir, **common)), "--out", str(single),
                 "--no-progress"]) == 0
    first = json.loads((out / "checkpoints" / "sst2" / "digital" / "candidates.json").read_text())
    assert next(r for r in _records(single) if r["condition"] == "digital")["headline"] == \
        first["candidates"][0]["dev_score"]
    assert not (single / "checkpoints" / "sst2" / "digital" / "candidates.json").exists()


def test_keep_best_digital_on_dev_and_hwa_on_tiles(setup):
    """keep_best in the digital and HWA recipes: each keeps its best evaluated state (HWA
    scored on tiles, the same score that ranks best_of candidates); curves in history.json."""
    root, glue, model_dir = setup
    cfg = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital", "hwa"], best_of=2,
                  select_repeats=3,
                  finetune={"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "eval_every": 4,
                            "keep_best": True},
                  hwa={"finetune": {"epochs": 1, "eval_every": 3, "keep_best": True},
                       "recipe": {"input_range_batches": 2}},
                  sweep={"times_seconds": [86400], "repeats": 1, "calibration_batches": 2,
                         "eval_batch_size": 8})
    out = root / "out_keep_best"
    assert main(["study", str(cfg), "--out", str(out), "--no-progress"]) == 0
    for step, every, total in (("digital", 4, 12), ("hwa", 3, 6)):
        folder = out / "checkpoints" / "sst2" / step
        hist = json.loads((folder / "history.json").read_text())
        steps = [s for s, _ in hist["evals"]]
        assert steps == sorted(set(list(range(0, total + 1, every)) + [total]))
        best = max(v for _, v in hist["evals"])
        assert hist["best_step"] == next(s for s, v in hist["evals"] if v == best)
        cands = json.loads((folder / "candidates.json").read_text())
        assert cands["candidates"][cands["chosen"]]["dev_score"] == best
    digital = next(r for r in _records(out) if r["condition"] == "digital")
    assert digital["headline"] == max(v for _, v in json.loads(
        (out / "checkpoints" / "sst2" / "digital" / "history.json").read_text())["evals"])


def test_merge_of_per_task_folders_equals_one_study(setup, capsys):
    """Running each task in its own folder (e.g. in parallel) and merging gives the records
    of one study of both tasks; the merged folder resumes; mismatches are refused."""
    root, glue, model_dir = setup
    common = dict(conditions=["digital", "analog"],
                  finetune={"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
                  sweep={"times_seconds": [3600], "repeats": 2, "calibration_batches": 2,
                         "eval_batch_size": 8})
    parts = []
    for task in ("sst2", "mrpc"):
        parts.append(root / f"out_merge_{task}")
        assert main(["study", str(_config(root, glue, model_dir, tasks=[task], **common)),
                     "--out", str(parts[-1]), "--no-progress"]) == 0
    both = root / "out_merge_both"
    both_cfg = _config(root, glue, model_dir, tasks=["sst2", "mrpc"], **common)
    assert main(["study", str(both_cfg), "--out", str(both), "--no-progress"]) == 0
    merged = root / "out_merged"
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    canon = lambda recs: sorted(json.dumps(r, sort_keys=True) for r in recs)
    assert canon(_records(merged)) == canon(_records(both))
    assert (merged / "report.md").is_file() and "MRPC" in (merged / "report.md").read_text()
    assert (merged / "checkpoints" / "mrpc" / "digital" / "model.safetensors").is_file()
    assert yaml.safe_load((merged / "config.yaml").read_text())["tasks"] == ["sst2", "mrpc"]
    # the merged folder is a study folder: the two-task config resumes there with nothing to do
    n = len(_records(merged))
    assert main(["study", str(both_cfg), "--out", str(merged), "--no-progress"]) == 0
    assert len(_records(merged)) == n
    capsys.readouterr()
    # a different study (another seed) is refused, as are records that disagree
    other = root / "out_merge_other"
    other.mkdir()
    cfg = yaml.safe_load((parts[0] / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump(dict(cfg, seed=1)))
    (other / "results.jsonl").write_text("")
    assert main(["merge", str(parts[0]), str(other), "--out", str(root / "out_bad")]) == 2
    assert "seed" in capsys.readouterr().err and not (root / "out_bad").exists()
    lines = (parts[1] / "results.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1]); rec["metrics"] = {k: 0.0 for k in rec["metrics"]}
    (parts[1] / "results.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
    assert main(["merge", str(parts[1]), str(both), "--out", str(root / "out_bad2")]) == 2
    assert "differs between" in capsys.readouterr().err and not (root / "out_bad2").exists()
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 2  # not empty
    capsys.readouterr()
    assert main(["merge", str(parts[0]), str(parts[0]) + "/", "--out", str(root / "out_twice")]) == 2
    assert f"merge was given the study folder {parts[0].resolve()} more than once" in capsys.readouterr().err
    assert not (root / "out_twice").exists()
    assert main(["merge", str(parts[0]), str(parts[1]), "--out", str(parts[1])]) == 2
    assert "is one of the folders being merged" in capsys.readouterr().err
    # no lock file comes along; the environment names each source's
    fresh = root / "out_merged_fresh"
    assert main(["merge", *map(str, parts), "--out", str(fresh)]) == 0
    assert (parts[0] / ".lock").exists() and not (fresh / ".lock").exists()
    env = json.loads((fresh / "environment.json").read_text())
    assert env["merged from"] == f"{parts[0]}, {parts[1]}"
    assert {f"environment of {p}" for p in parts} <= set(env)
