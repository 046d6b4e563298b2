"""`analogformer sensitivity`: a layer made fragile by construction ranks first (white weight
noise and tiles), the white-noise modes draw the std they say and leave the model exactly as it
was, an interrupted analysis resumes with identical records, the mixed mapping keeps exactly the
top-k digital and the tile count drops by their tiles, and the command runs on a model folder and
on a study YAML's `sensitivity:` section and refuses bad input with exit 2."""
import copy
import json
import math

import pytest
import torch
import yaml

import analogformer as af
from analogformer.cli import main
from analogformer.nn.convert import select_modules
from analogformer.sensitivity import SensitivityConfig
from analogformer.sensitivity.layers import find_layers
from analogformer.sensitivity.modes import MODES
from analogformer.sensitivity.run import exclude_config, mixed_mapping, sensitivity, tiles_of
from analogformer.study.config import load_study_config
from analogformer.study.records import RecordLog
from conftest import logit_mse_setup, tiny
from study_fixtures import _config, setup  # noqa: F401 (fixture)

FRAGILE = "bert.encoder.layer.1.intermediate.dense"


def _toy(fragile=True):
    """Tiny BERT, one batch, 16×16 tiles; the metric is the mean squared difference of the logits
    from the digital model's (lower is better). The fragile layer gets one weight 400× its rms:
    noise relative to max|W| (white weight noise, conductances on tiles) is then ~100× larger for
    its other weights than elsewhere."""
    model = tiny("bert")
    if fragile:
        w = model.get_submodule(FRAGILE).weight
        with torch.no_grad():
            w[3, 5] = 400 * w.pow(2).mean().sqrt()
            # the outlier unit feeds nothing: only the layer's own weights are fragile, not its outputs
            model.get_submodule("bert.encoder.layer.1.output.dense").weight[:, 3] = 0.0
    return (model, *logit_mse_setup(model, 8))


def test_layers_cover_analog_matrices_embeddings_and_head():
    model, _, cfg, _ = _toy(False)
    layers = {l.name: l for l in find_layers(model, cfg)}
    assert {n for n, l in layers.items() if l.kind == "analog"} == set(select_modules(model, cfg))
    assert layers["bert.embeddings.word_embeddings"].kind == "embedding"
    assert layers["bert.embeddings.word_embeddings"].column == "in"
    assert (layers["classifier"].kind, layers["classifier"].column) == ("digital", "out")
    assert (layers[FRAGILE].type, layers[FRAGILE].column) == ("intermediate.dense", "1")
    assert [l.name for l in find_layers(model, cfg, digital=False)] == select_modules(model, cfg)
    with pytest.raises(ValueError, match="no layer to perturb"):
        find_layers(model, cfg, select="nothing-like-this")


@pytest.mark.parametrize("mode, relative", [("weights", True), ("weights-absolute", False)])
def test_white_weight_noise_has_the_std_it_says_and_is_undone(mode, relative):
    model, _, _, _ = _toy(False)
    mod = model.get_submodule("bert.encoder.layer.0.intermediate.dense")
    before = mod.weight.detach().clone()
    std = 0.03
    with MODES[mode].perturb(mod, std, torch.Generator().manual_seed(1)):
        z = ((mod.weight.detach() - before) / (before.abs().max() if relative else 1.0)).flatten().double()
    assert torch.equal(mod.weight.detach(), before)
    n = z.numel()
    assert abs(z.mean().item()) < 4 * std / math.sqrt(n)
    assert abs(z.std().item() - std) < 4 * std / math.sqrt(2 * n)


def test_output_noise_is_relative_to_the_outputs_rms_and_removed():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 256)
    x = torch.randn(32, 64)
    with torch.no_grad():
        clean = lin(x)
        with MODES["outputs"].perturb(lin, 0.2, torch.Generator().manual_seed(2)):
            noisy = lin(x)
        assert torch.equal(lin(x), clean)
    z = ((noisy - clean) / clean.pow(2).mean().sqrt()).flatten().double()
    assert abs(z.std().item() - 0.2) < 4 * 0.2 / math.sqrt(2 * z.numel())


def test_a_fragile_layer_ranks_first_and_its_weights_are_the_widest(tmp_path):
    model, batch, cfg, mse = _toy()
    s = sensitivity(model, cfg, mse, RecordLog(tmp_path / "s.jsonl"), modes=["weights"], std=0.05,
                    repeats=2, calib_batches=[batch], higher_is_better=False)
    assert s.ranking("weights")[0] == FRAGILE
    d0, sem, n = s.drop("weights", FRAGILE)
    d1 = s.drop("weights", s.ranking("weights")[1])[0]
    assert n == 2 and d0 > 3 * d1                             # first by far
    assert max(s.weights, key=lambda k: s.weights[k]["max_over_rms"]) == FRAGILE
    assert s.correlations("weights")["max_over_rms"][0] > 0
    from analogformer.sensitivity.report import write_report
    text = write_report(s, tmp_path, "toy", metric="mse")
    assert f"| 1 | `{FRAGILE}` | analog |" in text and (tmp_path / "sensitivity.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_fragile_layer_ranks_first_on_tiles(tmp_path):
    model, batch, cfg, mse = _toy()
    # among the analog matrices (the random head, whose outputs are the logits, is sensitive on tiles too)
    s = sensitivity(model, cfg, mse, RecordLog(tmp_path / "s.jsonl"), modes=["tiles"], repeats=2,
                    calib_batches=[batch], higher_is_better=False, digital_layers=False)
    assert s.ranking("tiles")[0] == FRAGILE
    d0, sem, _ = s.drop("tiles", FRAGILE)
    assert d0 > 3 * s.drop("tiles", s.ranking("tiles")[1])[0]


def test_an_interrupted_analysis_resumes_with_identical_records(tmp_path):
    model, batch, cfg, mse = _toy()
    kw = dict(modes=["weights", "outputs", "tiles"], repeats=2, calib_batches=[batch], higher_is_better=False,
              select=r"layer\.0\.|classifier")
    sensitivity(model, cfg, mse, RecordLog(tmp_path / "a.jsonl"), **kw)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "b.jsonl").write_text("\n".join(lines[:len(lines) // 2]) + "\n")
    sensitivity(model, cfg, mse, RecordLog(tmp_path / "b.jsonl"), **kw)
    key = lambda r: (r["condition"], r["t_seconds"], r["repeat"])  # noqa: E731
    a = {key(json.loads(l)): json.loads(l)["headline"] for l in lines}
    b = {key(r): r["headline"] for r in RecordLog(tmp_path / "b.jsonl").records}
    assert a == b and len(a) == 1 + 7 * 2 * 2 + 7 * 2   # digital; 7 layers (6 matrices + head) × (weights, outputs, tiles) × 2


def test_mixed_mapping_keeps_exactly_the_top_k_digital_and_frees_their_tiles(tmp_path):
    model, batch, cfg, mse = _toy(False)
    log = RecordLog(tmp_path / "m.jsonl")
    s = sensitivity(model, cfg, mse, log, modes=["weights"], repeats=1, higher_is_better=False, digital_layers=False)
    ranking = s.ranking("weights", ("analog",))
    n = len(ranking)
    rows = mixed_mapping(model, cfg, mse, log, ranking, [0, 1, 3, n], repeats=2, calib_batches=[batch])
    tiles = {name: layer.num_tiles for name, layer in af.analogize(copy.deepcopy(model), copy.deepcopy(cfg)).named_modules()
             if isinstance(layer, af.AnalogLinear)}
    full = sum(tiles.values())
    assert rows[0]["tiles"] == full and full == tiles_of(model, cfg)[0]
    for r in rows:
        assert r["excluded"] == ranking[:r["k"]]
        kept = select_modules(model, exclude_config(cfg, ranking[:r["k"]]))
        assert sorted(kept) == sorted(set(tiles) - set(ranking[:r["k"]]))
        assert r["tiles"] == full - sum(tiles[x] for x in ranking[:r["k"]]) and r["tiles_saved"] == full - r["tiles"]
    assert rows[-1]["tiles"] == 0 and rows[-1]["headline"][0] == 0.0          # all digital: the digital model
    assert rows[0]["headline"][2] == 2 and rows[0]["headline"][0] > 0
    with pytest.raises(ValueError, match=r"k must be whole numbers in \[0, 12\]"):
        mixed_mapping(model, cfg, mse, log, ranking, [n + 1])


def test_the_yaml_section_is_parsed_and_checked(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"tasks": ["sst2"], "sensitivity": {"modes": ["outputs"], "std": 0.5, "mixed_k": [0, 2],
                                                                   "mixed_mode": "outputs"}}))
    s = load_study_config(str(p)).sensitivity
    assert isinstance(s, SensitivityConfig) and s.modes == ("outputs",) and s.mixed_k == (0, 2)
    p.write_text(yaml.safe_dump({"tasks": ["sst2"], "sensitivity": {"std": 0}}))
    with pytest.raises(ValueError, match="std"):
        load_study_config(str(p))
    p.write_text(yaml.safe_dump({"tasks": ["sst2"], "sensitivity": {"modes": ["weights"], "mixed_k": [1], "mixed_mode": "tiles"}}))
    with pytest.raises(ValueError, match="mixed_mode"):
        load_study_config(str(p))


def test_cli_on_a_model_folder_and_on_a_study_yaml(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    cfg = _config(root, glue, model_dir, tasks=["sst2"], output_dir=str(tmp_path / "study"),
                  sensitivity={"modes": ["weights"], "repeats": 2, "layers": r"layer\.0\.output|classifier"})
    out = tmp_path / "s"
    args = ["sensitivity", str(model_dir), "--task", "sst2", "--out", str(out), "--config", str(cfg),
            "--no-progress", "--mixed-k", "0,1", "--modes", "weights,tiles", "--time", "3600"]
    assert main(args) == 0
    text = (out / "sensitivity.md").read_text()
    assert "bert.encoder.layer.0.output.dense" in text and "Mixed mapping" in text
    assert (out / "mixed_mapping.png").is_file() and json.loads((out / "weights.json").read_text())
    n = len((out / "sensitivity.jsonl").read_text().splitlines())
    assert main(args) == 0 and len((out / "sensitivity.jsonl").read_text().splitlines()) == n  # all reused
    assert main(args[:-4] + ["--std", "0.3"]) == 2
    assert "another model, config or noise std" in capsys.readouterr().err
    # a study YAML: its `sensitivity:` section; no checkpoint -> the pre-trained model, said so
    assert main(["sensitivity", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "study" / "sensitivity" / "sst2" / "sensitivity.md").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--modes", "weights,bogus"], "modes: must be distinct entries"),
    (["--std", "0"], "std: must be a finite number > 0"),
    (["--repeats", "0"], "repeats: must be a whole number"),
    (["--mixed-k", "1,x"], "mixed_k: must be whole numbers"),
    (["--modes", "weights", "--mixed-k", "1", "--mixed-mode", "tiles"], "mixed_mode: 'tiles' must be one of the measured modes"),
    (["--layers", "("], "invalid regex"),
])
def test_bad_input_exits_2_with_a_clear_message(setup, tmp_path, capsys, extra, message):
    root, glue, model_dir = setup
    cfg = _config(root, glue, model_dir, tasks=["sst2"])
    assert main(["sensitivity", str(model_dir), "--task", "sst2", "--out", str(tmp_path / "o"), "--config", str(cfg),
                 "--no-progress"] + extra) == 2
    assert message in capsys.readouterr().err


def test_a_model_folder_needs_task_and_out(setup, capsys):
    _, _, model_dir = setup
    assert main(["sensitivity", str(model_dir)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["sensitivity", str(model_dir), "--task", "sst2"]) == 2
    assert "--out is needed" in capsys.readouterr().err
