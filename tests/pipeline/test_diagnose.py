"""`analogformer diagnose`: the rows come from one registry, ideal tiles equal digital exactly,
a non-ideality that changes nothing costs nothing, a dominant one ranks first, an interrupted
diagnosis resumes with identical numbers, and the command runs on a model folder and on a study
YAML (with and without the study's fine-tuned checkpoint) and refuses bad input with exit 2."""
import json
import shutil

import pytest
import torch

import analogformer as af
from analogformer.cli import main
from analogformer.diagnose import EFFECTS, build_rows, diagnose, ideal_config, write_report
from analogformer.diagnose.effects import only_config
from analogformer.study.records import RecordLog
from conftest import logit_mse_setup, tiny
from study_fixtures import _config, setup  # noqa: F401 (fixture)


def _toy():
    """A tiny BERT, one batch, 16×16 tiles, and a metric with an exact zero: the mean squared
    difference of the logits from the digital model's (lower is better)."""
    model = tiny("bert")
    return (model, *logit_mse_setup(model, 6))


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_rows_come_from_the_registry_and_ideal_is_analog_config_ideal():
    assert ideal_config(af.AnalogConfig()) == af.AnalogConfig.ideal()
    names = [r.name for r in build_rows(af.AnalogConfig())]
    assert names[:3] == ["digital", "ideal tiles", "all on"]
    for key, e in EFFECTS.items():
        if e.choice:
            continue
        if e.alone:  # "only N" has N on and every other effect off
            on = {k for k, f in EFFECTS.items() if not f.choice and f.is_on(only_config(af.AnalogConfig(), key))}
            assert on == {key}
        assert (f"all but {e.label}" in names) == e.is_on(af.AnalogConfig())
    no_dac = af.AnalogConfig(dac=af.DACConfig(bits=None))
    assert not any("DAC" in r.name for r in build_rows(no_dac))  # an effect that is off gets no rows
    aihwkit = [r.name for r in build_rows(af.AnalogConfig.preset("aihwkit-inference"))]
    assert "all but bound management" in aihwkit and "only bound management" not in aihwkit
    assert "all on, static DAC range" in aihwkit


def test_ideal_equals_digital_exactly_and_a_no_op_costs_nothing():
    model, batch, cfg, mse = _toy()
    d = diagnose(model, cfg, mse, [batch], times=(1.0,), repeats=2, higher_is_better=False,
                 effects=["compensation", "output_noise"])
    assert d.stats("digital", None) == (0.0, 0.0, 1)
    assert d.stats("ideal tiles", None) == (0.0, 0.0, 1)  # never programmed: exactly F.linear
    # compensation alone has nothing to correct (no drift, no noise): both instances are the
    # ideal tiles up to the float rounding of weight -> conductance -> weight
    alone = d.values("only compensation", 1.0)
    assert len(alone) == 2 and len(set(alone.values())) == 1 and alone[0] < 1e-10
    assert d.stats("only output noise", 1.0)[0] > 1e4 * alone[0]
    assert not d.row("only compensation").timed and d.row("all on").timed


def test_a_dominant_non_ideality_ranks_first_and_is_charted(tmp_path):
    model, batch, cfg, mse = _toy()
    cfg.adc.output_noise_std = 3.0  # 75× the SPEC's read-out noise
    d = diagnose(model, cfg, mse, [batch], times=(1.0,), repeats=2, higher_is_better=False,
                 effects=["dac", "output_noise", "drift"])
    assert d.ranking(1.0)[0] == "output_noise"
    top = d.attribution(1.0)[0]
    assert top["gain_removed"][0] > 0 and top["cost_alone"][0] > 0  # lower is better: signs flipped
    assert top["cost_alone"][0] == max(a["cost_alone"][0] for a in d.attribution(1.0))
    text = write_report(d, tmp_path, "toy", metric="logit MSE")
    assert "lower is better" in text and "| all but output noise |" in text
    assert text.index("all but output noise") < text.index("all but drift")  # ranked rows
    assert "exactly the digital headline" in text
    assert (tmp_path / "diagnosis.png").stat().st_size > 10_000


def test_an_interrupted_diagnosis_resumes_with_identical_records(tmp_path):
    model, batch, cfg, mse = _toy()
    path = tmp_path / "diagnosis.jsonl"
    run = lambda: diagnose(model, cfg, mse, [batch], times=(1.0, 86400.0), repeats=2, log=RecordLog(path),
                           higher_is_better=False, effects=["output_noise"])
    first = run()
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for i, line in enumerate(lines) if i % 3 != 1))  # lose a third
    torch.manual_seed(1234)  # another process: another global RNG state
    torch.randn(99)
    again = run()
    key = lambda r: json.dumps(r, sort_keys=True)
    assert sorted(map(key, _records(path))) == sorted(map(key, (json.loads(line) for line in lines)))
    assert [again.stats(r.name, 86400.0) for r in again.rows] == [first.stats(r.name, 86400.0) for r in first.rows]


FAST = ["--times", "1", "--repeats", "2", "--effects", "compensation,output_noise", "--no-progress",
        "--set", "sweep.eval_batch_size=8", "--set", "sweep.calibration_batches=2",
        "--set", "analog.adc.noise_pool_size=65536"]


@pytest.fixture(scope="module")
def study(setup):
    """A study YAML of SST-2 whose output folder holds a digital checkpoint (the tiny model, copied
    where `analogformer study` saves its fine-tuned model: diagnose only looks for it)."""
    root, glue, model_dir = setup
    yaml_path = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital"],
                        output_dir=str(root / "diag-study"))
    ckpt = root / "diag-study" / "checkpoints" / "sst2" / "digital"
    shutil.copytree(model_dir, ckpt)
    return yaml_path, ckpt


def test_cli_on_a_checkpoint_folder_resumes_and_refuses_another_config(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    out = tmp_path / "diag"
    args = ["diagnose", str(model_dir), "--task", "sst2", "--out", str(out), "--glue-dir", str(glue), *FAST,
            "--set", "analog.tile.rows=16", "--set", "analog.tile.cols=16"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the model folder" in printed and "| ideal tiles |" in printed and "| all but output noise |" in printed
    for f in ("diagnosis.md", "diagnosis.png", "diagnosis.jsonl", "diagnosis.json"):
        assert (out / f).is_file(), f
    recs = {(r["condition"], r["t_seconds"], r["repeat"]): r for r in _records(out / "diagnosis.jsonl")}
    assert len(recs) == 2 + 2 * 5  # digital, ideal; all on, all but × 2 repeats; only × 2 (t-independent)
    assert recs[("ideal tiles", None, 0)]["headline"] == recs[("digital", None, 0)]["headline"]
    assert set(recs[("all on", 1.0, 0)]["metrics"]) == {"accuracy"}
    before = (out / "diagnosis.jsonl").read_text()
    assert main(args) == 0 and (out / "diagnosis.jsonl").read_text() == before  # all there: nothing re-done
    assert main(args + ["--set", "analog.adc.bits=6"]) == 2
    assert "another model or config" in capsys.readouterr().err


def test_cli_on_a_study_yaml_uses_its_checkpoint_or_says_it_has_none(setup, study, capsys):
    root, glue, model_dir = setup
    yaml_path, ckpt = study
    assert main(["diagnose", str(yaml_path), *FAST]) == 0
    assert f"fine-tuned checkpoint {ckpt}" in capsys.readouterr().out
    assert (root / "diag-study" / "diagnosis" / "sst2" / "diagnosis.md").is_file()  # the default --out
    # the study's report carries the diagnosis, headings below its own, figure path from the study folder
    from analogformer.report.build import _extras
    blocks = _extras(root / "diag-study")
    at = blocks.index(("h", 2, "Diagnosis: SST-2"))
    md = blocks[at + 2][1]
    assert blocks[at + 2][0] == "md" and "](diagnosis/sst2/diagnosis.png)" in md
    assert md.startswith("Model: ") and "\n# " not in md and "\n## " not in md and "\n#### At " in md
    fresh = _config(root, glue, model_dir, tasks=["sst2"], output_dir=str(root / "never-run"))
    assert main(["diagnose", str(fresh), "--times", "1", "--repeats", "1", "--effects", "dac", "--no-progress"]) == 0
    assert "NOT fine-tuned for sst2" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["{model}", "--task", "nosuchtask", "--out", "{tmp}"], "unknown task 'nosuchtask'"),
    (["{tmp}/missing", "--task", "sst2", "--out", "{tmp}"], "neither a study YAML file nor a saved model folder"),
    (["{model}", "--task", "sst2", "--out", "{tmp}", "--times", "1,a"], "'a' is not a number of seconds"),
    (["{model}", "--task", "sst2", "--out", "{tmp}", "--times", "-3"], "not a time >= 0"),
    (["{model}", "--task", "sst2", "--out", "{tmp}", "--effects", "dac,warp"], "unknown ['warp']"),
    (["{model}", "--task", "sst2", "--out", "{tmp}", "--repeats", "0"], "--repeats must be a whole number >= 1"),
    (["{model}", "--out", "{tmp}"], "name the task it was fine-tuned for with --task"),
    (["{model}", "--task", "sst2"], "--out is needed"),
    (["{tmp}", "--task", "sst2", "--out", "{tmp}"], "no config.json"),
])
def test_bad_input_exits_2_with_a_clear_message(setup, tmp_path, capsys, args, message):
    _, _, model_dir = setup
    args = [a.format(model=model_dir, tmp=tmp_path) for a in args]
    assert main(["diagnose", *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
