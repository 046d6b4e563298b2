"""NaNs never go undetected (issue: a model with one NaN weight trained 48 steps on `nan`
loss, saved a NaN checkpoint that later runs reused, and recorded a digital accuracy of
0.49). Weights are checked at load, training stops on a non-finite loss naming the step,
and nothing non-finite is saved, predicted from or recorded."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from analogformer.cli import main
from analogformer.training.finetune import FinetuneConfig, finetune, predict, save_checkpoint
from conftest import tiny
from study_fixtures import _config, _records, setup  # noqa: F401 (fixture)


def _loader(n=4):
    g = torch.Generator().manual_seed(0)
    return [dict(input_ids=torch.randint(5, 99, (4, 8), generator=g), attention_mask=torch.ones(4, 8, dtype=torch.long),
                 labels=torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def _poisoned():
    model = tiny("bert")
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    return model


def test_training_stops_at_the_first_nonfinite_loss_naming_the_step_and_the_tensor():
    model = _poisoned()
    with pytest.raises(FloatingPointError, match=r"optimizer step 1 of 4: the training loss is nan; the model "
                                                 r"holds non-finite values in \['bert.encoder.layer.0.output"
                                                 r".dense.weight'\]"):
        finetune(model, _loader(), FinetuneConfig(epochs=1, batch_size=4))


def test_a_diverging_loss_stops_at_its_step_with_the_fix():
    calls = []

    def explode(model):  # finite for two steps, then an overflow
        calls.append(1)
        return torch.tensor(0.0 if len(calls) < 3 else float("inf"))
    with pytest.raises(FloatingPointError, match=r"step 3 of 4: the training loss is inf; the weights are "
                                                 r"finite, .*lower finetune.learning_rate"):
        finetune(tiny("bert"), _loader(), FinetuneConfig(epochs=1, batch_size=4), extra_loss=explode)


def test_a_nonfinite_model_is_neither_saved_nor_predicted_from(tmp_path):
    model = _poisoned()
    with pytest.raises(FloatingPointError, match=r"refusing to save .*'bert.encoder.layer.0.output.dense.weight'"):
        save_checkpoint(model, None, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(FloatingPointError, match=r"outputs on batch 1 contain NaN or inf; non-finite parameters"):
        predict(model, _loader(1))


def test_a_study_refuses_a_model_with_a_nan_weight_before_anything_is_computed(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    bad = tmp_path / "nan-model"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("attention.self.query.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    assert main(["study", str(_config(root, glue, bad)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and "query.weight" in err
    assert not (out / "results.jsonl").exists() and not (out / "checkpoints").exists()


def test_a_reused_checkpoint_with_a_nan_names_the_folder_to_delete(setup, tmp_path, capsys):
    root, glue, model_dir = setup
    cfg = _config(root, glue, model_dir, tasks=["sst2"], conditions=["digital"],
                  finetune={"epochs": 1, "batch_size": 16, "learning_rate": 5e-3},
                  sweep={"times_seconds": [1], "repeats": 1, "calibration_batches": 1, "eval_batch_size": 8})
    out = tmp_path / "out"
    assert main(["study", str(cfg), "--out", str(out), "--no-progress"]) == 0
    ckpt = out / "checkpoints" / "sst2" / "digital"
    weights = load_file(ckpt / "model.safetensors")
    weights[next(iter(weights))].view(-1)[0] = float("inf")
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    (out / "results.jsonl").unlink()  # the digital record must be re-made from the checkpoint
    assert main(["study", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"the checkpoint {ckpt} holds non-finite weights" in err and f"delete the folder {ckpt}" in err
    assert not (out / "results.jsonl").exists() or _records(out) == []
