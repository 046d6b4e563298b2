"""A task registered inside a test runs through `analogformer study` end to end with no
pipeline change; its headline is an error rate (lower is better), so model selection, the
digital-vs-tiles drop and the report must follow the task's direction, not assume higher."""
import json
import random

import numpy as np
import pytest
import yaml

from analogformer.cli import main
from analogformer.report import build_report
from analogformer.study.config import load_study_config
from analogformer.tasks import EncodedDataset, Task, find_task, make_loader, register_task, unregister_task
from analogformer.training.finetune import predict
from study_fixtures import FILLER, _records, setup  # noqa: F401 (fixture)


class ToyTask(Task):
    """Does the sentence say "good"? Synthetic sentences, made (not read) per split."""

    name = "toy"
    display_name = "Toy"
    higher_is_better = False
    metric_names = {"error_rate": "error rate"}
    SIZES = {"train": 64, "dev": 32}

    def dataset(self, split, tokenizer, data, max_examples, seed):
        rng = random.Random(f"{split}-{seed}")
        n = min(self.SIZES[split], max_examples or self.SIZES[split])
        labels = [rng.randint(0, 1) for _ in range(n)]
        texts = [" ".join([rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + ["good" if y else "bad"])
                 for y in labels]
        enc = tokenizer(texts, truncation=True, max_length=data.max_length)
        return EncodedDataset(enc["input_ids"], enc.get("token_type_ids"), labels, False, tokenizer.pad_token_id)

    def loader(self, dataset, batch_size, shuffle, seed=0):
        return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed)

    def model_kwargs(self):
        return {"num_labels": 2}

    def evaluate(self, model, batches, key):
        logits, labels = predict(model, batches)
        wrong = float(np.mean(logits.argmax(-1).numpy() != labels.numpy()))
        return {"error_rate": wrong, "accuracy": 1 - wrong}

    def headline_metric(self, key):
        return "error_rate"


@pytest.fixture
def toy():
    register_task(ToyTask(), aliases=["toy-task"])
    yield
    unregister_task("toy")


def test_a_task_registered_in_a_test_runs_through_the_study(setup, toy):
    root, _, model_dir = setup
    cfg = {"model": str(model_dir), "tasks": ["toy-task"], "best_of": 2,
           "finetune": {"epochs": 6, "batch_size": 16, "learning_rate": 5e-3},
           "analog": {"tile": {"rows": 16, "cols": 16}},
           "sweep": {"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2, "eval_batch_size": 8},
           "conditions": ["digital", "analog"]}
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "out_toy"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    assert len(recs) == 1 + 2 * 2 and {r["task"] for r in recs} == {"toy"}
    assert all(r["headline"] == r["metrics"]["error_rate"] for r in recs)
    digital = next(r for r in recs if r["condition"] == "digital")["headline"]
    assert digital <= 0.25  # the toy task is learnable
    # best_of ranks by the task's direction: the kept candidate has the lowest error
    cands = json.loads((out / "checkpoints" / "toy" / "digital" / "candidates.json").read_text())
    scores = [c["dev_score"] for c in cands["candidates"]]
    assert cands["chosen"] == scores.index(min(scores))
    md = (out / "report.md").read_text()
    assert "### Toy — error rate" in md and "GLUE average" not in md


def test_the_report_signs_the_drop_by_the_task_direction(tmp_path, toy):
    """Drop vs digital = digital − condition where higher is better (SST-2), condition −
    digital where lower is better (the toy error rate): positive = worse, for both."""
    recs = [dict(task=task, condition=c, t_seconds=t, repeat=0, metrics={m: v}, headline=v)
            for task, m, dig, ana in (("sst2", "accuracy", 0.90, 0.80), ("toy", "error_rate", 0.10, 0.25))
            for c, t, v in (("digital", None, dig), ("analog", 2592000.0, ana))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md = build_report(tmp_path).read_text()
    assert "| analog | 1 mo | +10.00 | +15.00 |" in md
    assert "GLUE average" not in md  # an average only over tasks of one benchmark


def test_an_unknown_task_lists_the_registered_ones_with_a_did_you_mean(toy):
    with pytest.raises(ValueError, match=r"unknown task 'sst3'; did you mean 'sst2'.*Registered tasks: \["):
        load_study_config(None, [("tasks", ["sst3"])])
    with pytest.raises(ValueError, match=r"unknown task 'toyy'; did you mean 'toy'"):
        find_task("toyy")
    with pytest.raises(ValueError, match=r"StudyConfig.tasks: a task is a name, got int 1; registered tasks: \["):
        load_study_config(None, [("tasks", [1])])
    with pytest.raises(ValueError, match="a task is a name, got int 1"):
        find_task(1)
