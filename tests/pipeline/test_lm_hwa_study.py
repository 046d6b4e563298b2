"""The `hwa` condition of a causal-LM study: it distils from the digital (pre-trained) model by
default, on the task's windows or on text the digital model samples (`hwa.teacher_text`), keeps
training states while it runs (`checkpoint_every`) and removes them once the HWA checkpoint is
saved; an explicit `distill_weight` is respected."""
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lm_fixtures import save_tiny, wikitext_dir  # noqa: E402

import analogformer.study.finetune_step as fs  # noqa: E402
from analogformer.study.config import load_study_config  # noqa: E402
from analogformer.study.pipeline import run_study  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, hwa):
    model = save_tiny("llama", tmp_path / "tiny-llama")
    wt = wikitext_dir(tmp_path / "wt2")
    cfg = {"model": str(model), "tasks": ["wikitext2"], "seed": 0,
           "data": {"lm": {"wikitext2_dir": str(wt), "window_tokens": 16}, "max_eval_examples": 4,
                    "max_train_examples": 8},
           "finetune": {"batch_size": 4, "learning_rate": 1e-3},
           "analog": {"preset": "llm", "tile": {"rows": 16, "cols": 16}},
           "sweep": {"times_seconds": [1], "repeats": 1, "calibration_batches": 2, "eval_batch_size": 4},
           "conditions": ["digital", "hwa"], "hwa": hwa}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_study_config(str(path))


def _spy(monkeypatch):
    calls = []
    real = fs.finetune

    def spy(model, loader, cfg, **kw):
        first = next(iter(loader))
        calls.append({"cfg": cfg, "teacher": kw.get("teacher"), "state_dir": kw.get("state_dir"), "batch": first})
        return real(model, loader, cfg, **kw)

    monkeypatch.setattr(fs, "finetune", spy)
    return calls


def test_lm_hwa_distils_on_teacher_text_with_training_states(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    cfg = _config(tmp_path, {"finetune": {"epochs": 1, "checkpoint_every": 1},
                             "recipe": {"clip": None, "weight_noise_relative_to": "channel"},
                             "teacher_text": {"sequences": 6, "tokens": 16, "batch_size": 3, "seed": 1}})
    out = tmp_path / "out"
    run_study(cfg, str(out), progress=False)
    (call,) = calls  # no digital fine-tune for an LM: only the HWA one
    assert call["cfg"].distill_weight == 1.0 and call["teacher"] is not None
    assert call["state_dir"] == out / "checkpoints" / "wikitext2" / "hwa.train-state" / "candidate-0"
    assert call["batch"]["input_ids"].shape == (4, 16)  # teacher text: 6 sequences of 16 tokens
    hist = json.loads((out / "checkpoints" / "wikitext2" / "hwa" / "history.json").read_text())
    assert len(hist["losses"]) == 2  # ceil(6 / 4) steps
    assert not (out / "checkpoints" / "wikitext2" / "hwa.train-state").exists()
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {r["condition"] for r in recs} == {"digital", "hwa"}


def test_an_explicit_distill_weight_is_respected(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    cfg = _config(tmp_path, {"finetune": {"max_steps": 1, "distill_weight": 0.0}, "recipe": {"clip": None}})
    run_study(cfg, str(tmp_path / "out"), progress=False)
    (call,) = calls
    assert call["cfg"].distill_weight == 0.0 and call["teacher"] is None
    assert call["state_dir"] is None
    assert call["batch"]["input_ids"].shape == (4, 16)  # the task's training windows


def test_teacher_text_needs_a_causal_lm_task(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["sst2"], "conditions": ["digital", "hwa"],
                                    "hwa": {"teacher_text": {"sequences": 2}}}))
    with pytest.raises(ValueError, match="hwa.teacher_text"):
        load_study_config(str(path))
