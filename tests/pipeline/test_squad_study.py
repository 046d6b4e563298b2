"""A tiny SQuAD study end to end (digital fine-tune, HWA with distillation, analog ± compensation over time,
INT6 attention, report) on a tiny random BERT QA model and a synthetic SQuAD folder; resume after an
interruption gives the same records."""
import json
import random

import pytest
import yaml
from transformers import BertConfig, BertForQuestionAnswering, BertTokenizer

from analogformer.cli import main
from study_fixtures import _records

FILLER = ["the", "a", "car", "house", "is", "big", "small", "and", "of", "tree"]
COLOURS = ["red", "blue", "green", "yellow"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "colour", "?", "."] + FILLER + COLOURS


def _squad_folder(path, rng, n_articles=10, per_article=8):
    data = []
    for a in range(n_articles):
        paragraphs = []
        for q in range(per_article):
            words = [rng.choice(FILLER) for _ in range(rng.randint(4, 14))]
            colour = rng.choice(COLOURS)
            words.insert(rng.randint(0, len(words)), colour)
            context = " ".join(words) + " ."
            start = len(" ".join(words[:words.index(colour)])) + (1 if words.index(colour) else 0)
            assert context[start:start + len(colour)] == colour
            paragraphs.append({"context": context, "qas": [{"id": f"{a}-{q}", "question": "what colour ?",
                                                            "answers": [{"answer_start": start, "text": colour}]}]})
        data.append({"title": f"Article {a}", "paragraphs": paragraphs})
    path.mkdir(parents=True)
    (path / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": data}))


@pytest.fixture(scope="module")
def squad_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("squad-study")
    _squad_folder(root / "squad", random.Random(0))
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(vocab=str(root / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForQuestionAnswering(cfg).save_pretrained(root / "tiny-bert-qa")
    tok.save_pretrained(root / "tiny-bert-qa")
    return root


def test_squad_study_end_to_end_and_resume(squad_setup):  # ~35 s of CPU: two fine-tunes, 13 evaluations, twice
    root = squad_setup
    cfg = {"model": str(root / "tiny-bert-qa"), "tasks": ["squad"], "seed": 0,
           "data": {"squad_dir": str(root / "squad"), "max_length": 24, "doc_stride": 6},
           "finetune": {"epochs": 10, "batch_size": 16, "learning_rate": 5e-3},
           # HWA distils start/end logits from the digital model beside the QA loss
           "hwa": {"finetune": {"epochs": 1, "learning_rate": 1e-3, "distill_weight": 0.5}},
           "analog": {"tile": {"rows": 16, "cols": 16}},
           "sweep": {"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2, "eval_batch_size": 8,
                     "times_per_condition": {"hwa-int6": [2592000]}},
           "conditions": ["digital", "analog-nocomp", "analog", "hwa", "hwa-int6"]}
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "out"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    recs = _records(out)
    assert len(recs) == 1 + 3 * 2 * 2 + 2          # hwa-int6 (INT6 attention) at 1 month only
    assert {r.get("attention_bits") for r in recs if r["condition"] == "hwa-int6"} == {6}
    assert {r["task"] for r in recs} == {"squad"}
    for r in recs:
        assert set(r["metrics"]) == {"f1", "exact_match"}
        assert r["headline"] == r["metrics"]["f1"] and 0 <= r["metrics"]["exact_match"] <= r["metrics"]["f1"] <= 1
    digital = next(r for r in recs if r["condition"] == "digital")
    # contexts with some windows cut (24 tokens): the toy task is learnt well above chance
    assert digital["headline"] >= 0.6, digital
    report = (out / "report.md").read_text()
    assert "SQuAD v1.1" in report and "F1" in report
    assert (out / "metric_vs_time_squad.png").exists()

    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-4]) + "\n" + lines[-4][:20])
    with pytest.warns(UserWarning, match="truncated"):
        assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    again = _records(out)
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in recs)
