"""Shared set-up of the pipeline tests: a tiny random BERT, its tokenizer and a tiny GLUE
folder (SST-2 and MRPC of synthetic "good"/"bad" sentences), and study-config helpers."""
import json
import random

import pytest
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

FILLER = ["the", "a", "movie", "film", "was", "is", "plot", "actors", "really", "quite"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"] + FILLER


def _sentence(rng, label):
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 7))]
    words.insert(rng.randint(0, len(words)), "good" if label else "bad")
    return " ".join(words)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    rng = random.Random(0)
    glue = root / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "MRPC").mkdir(parents=True)
    for split, n in (("train", 96), ("dev", 24)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            y = rng.randint(0, 1)
            rows.append(f"{_sentence(rng, y)}\t{y}")
        (glue / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            y = rng.randint(0, 1)
            rows.append(f"{y}\t{i}\t{i + 1000}\t{_sentence(rng, y)}\t{_sentence(rng, rng.randint(0, 1))}")
        (glue / "MRPC" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    model_dir = root / "tiny-bert"
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(vocab=str(vocab))
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return root, glue, model_dir


def _config(root, glue, model_dir, **extra):
    cfg = {"model": str(model_dir), "tasks": ["sst2", "mrpc"], "seed": 0,
           "data": {"glue_dir": str(glue)},
           "finetune": {"epochs": 8, "batch_size": 16, "learning_rate": 5e-3},
           "analog": {"tile": {"rows": 16, "cols": 16}},
           "sweep": {"times_seconds": [1, 2592000], "repeats": 2, "calibration_batches": 2,
                     "eval_batch_size": 8},
           "conditions": ["digital", "analog-nocomp", "analog", "analog-gamma0.5"]}
    cfg.update(extra)
    path = root / f"study_{len(list(root.glob('study_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(out):
    return [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l.strip()]
