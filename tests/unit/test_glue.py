"""GLUE loading, tokenization, batching and metrics."""
import csv
import math
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer

from analogformer.tasks import (compute_metrics, encode_examples, get_task, glue_average,
                                headline_metric, headline_value, load_glue_examples,
                                make_loader, predictions_from_logits)

REAL_GLUE = Path(__file__).parents[2].parent / "shared" / "data" / "glue"
MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
               "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
               "sentence2", "label1"]


def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def _mnli_row(i, s1, s2, gold, n_labels):
    return [str(i), "p", "q", "fiction", "(b1)", "(b2)", "(p1)", "(p2)", s1, s2,
            *([gold] * n_labels), gold]


@pytest.fixture
def glue_dir(tmp_path):
    _write(tmp_path / "CoLA" / "dev.tsv", [["gj04", "1", "", "the cat sat"],
                                            ["gj04", "0", "*", 'sat "cat the']])
    _write(tmp_path / "SST-2" / "dev.tsv", [["sentence", "label"], ["a good movie ", "1"],
                                             ['"bad" one ', "0"], ["fine", "1"]])
    _write(tmp_path / "MRPC" / "dev.tsv",
           [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            ["1", "11", "12", "He said so.", '"He said so.'], ["0", "13", "14", "A b.", "C d."]])
    _write(tmp_path / "QQP" / "dev.tsv",
           [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["7", "1", "2", "How?", "Why?", "0"], ["8", "3", "4", "Who?", "Who is?", "1"]])
    _write(tmp_path / "STS-B" / "dev.tsv",
           [["index", "genre", "filename", "year", "old_index", "source1", "source2",
             "sentence1", "sentence2", "score"],
            ["0", "main", "MSRvid", "2012", "0000", "none", "none", "A man.", "A guy.", "4.750"],
            ["1", "main", "MSRvid", "2012", "0001", "none", "none", "A dog.", "A cat.", "0.5"]])
    _write(tmp_path / "MNLI" / "train.tsv",
           [MNLI_HEADER + ["gold_label"], _mnli_row(0, "P0", "H0", "neutral", 1)])
    dev_header = MNLI_HEADER + ["label2", "label3", "label4", "label5", "gold_label"]
    _write(tmp_path / "MNLI" / "dev_matched.tsv",
           [dev_header, _mnli_row(0, "P1", "H1", "contradiction", 5),
            _mnli_row(1, "P2", "H2", "entailment", 5)])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv",
           [dev_header, _mnli_row(0, "P3", "H3", "neutral", 5)])
    _write(tmp_path / "QNLI" / "dev.tsv", [["index", "question", "sentence", "label"],
                                            ["0", "Q?", "S.", "not_entailment"],
                                            ["1", "R?", "T.", "entailment"]])
    _write(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"],
                                           ["0", "X y.", "X.", "entailment"],
                                           ["1", "Z w.", "W.", "not_entailment"]])
    return tmp_path


@pytest.fixture
def tokenizer(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "movie", "one",
             "fine", "the", "cat", "sat", "very"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(vocab))


def _triples(examples):
    return [(e.text_a, e.text_b, e.label) for e in examples]


def test_every_task_format(glue_dir):
    assert _triples(load_glue_examples("CoLA", "dev", glue_dir)) == [
        ("the cat sat", None, 1), ('sat "cat the', None, 0)]
    assert _triples(load_glue_examples("sst-2", "dev", glue_dir)) == [
        ("a good movie ", None, 1), ('"bad" one ', None, 0), ("fine", None, 1)]
    assert _triples(load_glue_examples("MRPC", "dev", glue_dir)) == [
        ("He said so.", '"He said so.', 1), ("A b.", "C d.", 0)]
    assert _triples(load_glue_examples("qqp", "dev", glue_dir)) == [
        ("How?", "Why?", 0), ("Who?", "Who is?", 1)]
    stsb = load_glue_examples("STS-B", "dev", glue_dir)
    assert _triples(stsb) == [("A man.", "A guy.", 4.75), ("A dog.", "A cat.", 0.5)]
    assert all(isinstance(e.label, float) for e in stsb)
    # MNLI ids: entailment 0, neutral 1, contradiction 2 (HF datasets order)
    assert _triples(load_glue_examples("mnli", "dev_matched", glue_dir)) == [
        ("P1", "H1", 2), ("P2", "H2", 0)]
    assert _triples(load_glue_examples("MNLI-MM", "dev", glue_dir)) == [("P3", "H3", 1)]
    assert _triples(load_glue_examples("mnli-m", "validation", glue_dir)) == [
        ("P1", "H1", 2), ("P2", "H2", 0)]
    assert _triples(load_glue_examples("mnli", "train", glue_dir)) == [("P0", "H0", 1)]
    assert _triples(load_glue_examples("QNLI", "dev", glue_dir)) == [("Q?", "S.", 1),
                                                                     ("R?", "T.", 0)]
    assert _triples(load_glue_examples("rte", "dev", glue_dir)) == [("X y.", "X.", 0),
                                                                    ("Z w.", "W.", 1)]


def test_hub_path_without_datasets_says_how_to_fix():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            load_glue_examples("sst2", "dev", data_dir=None)
    else:
        pytest.skip("datasets is installed; the hub itself is never called in tests")


def test_task_specs_and_aliases():
    assert get_task("SST2") is get_task("sst-2") is get_task("Sst")
    assert get_task("sts-b").num_labels == 1 and get_task("stsb").is_regression
    assert get_task("mnli-mm").num_labels == 3
    assert get_task("mnli").eval_splits == ("dev_matched", "dev_mismatched")
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
        get_task("wnli")


def test_missing_folder_file_and_split(glue_dir, tmp_path):
    with pytest.raises(ValueError, match=r"CoLA.*does not exist"):
        load_glue_examples("cola", "dev", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"SST-2[/\\]train\.tsv does not exist"):
        load_glue_examples("sst2", "train", glue_dir)
    with pytest.raises(ValueError, match=r"no split 'dev'.*dev_matched"):
        load_glue_examples("mnli", "dev", glue_dir)
    with pytest.raises(ValueError, match="max_examples"):
        load_glue_examples("sst2", "dev", glue_dir, max_examples=0)


@pytest.mark.parametrize("folder, rows, message", [
    ("SST-2", [["sentence", "label"], ["ok", "1"], ["too", "many", "cols"]],
     r"dev\.tsv, line 3: expected 2 tab-separated columns for SST-2, got 3"),
    ("SST-2", [["sentence", "label"], ["ok", "1"], ["bad label", "2"]],
     r"dev\.tsv, line 3: label '2' is not one of \['0', '1'\]"),
    ("SST-2", [["text", "label"], ["ok", "1"]], r"dev\.tsv, line 1: expected the SST-2 header"),
    ("RTE", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "yes"]],
     r"dev\.tsv, line 2: label 'yes'"),
    ("STS-B", [["index", "genre", "filename", "year", "old_index", "source1", "source2",
                "sentence1", "sentence2", "score"],
               ["0", "g", "f", "y", "o", "s", "s", "a", "b", "5.5"]],
     r"dev\.tsv, line 2: STS-B score '5.5' is not a float in \[0, 5\]"),
    ("CoLA", [["src", "1", "", "fine"], ["src", "1", "fine"]],
     r"dev\.tsv, line 2: expected 4 tab-separated columns for CoLA, got 3"),
])
def test_malformed_rows_name_file_and_line(tmp_path, folder, rows, message):
    _write(tmp_path / folder / "dev.tsv", rows)
    with pytest.raises(ValueError, match=message) as err:
        load_glue_examples(folder, "dev", tmp_path)
    assert str(tmp_path / folder / "dev.tsv") in str(err.value)


def test_seeded_subset_is_deterministic_and_in_file_order(tmp_path):
    rows = [["sentence", "label"]] + [[f"s{i}", str(i % 2)] for i in range(50)]
    _write(tmp_path / "SST-2" / "train.tsv", rows)
    a = load_glue_examples("sst2", "train", tmp_path, max_examples=10, seed=3)
    b = load_glue_examples("sst2", "train", tmp_path, max_examples=10, seed=3)
    c = load_glue_examples("sst2", "train", tmp_path, max_examples=10, seed=4)
    ids = [int(e.text_a[1:]) for e in a]
    assert a == b and len(a) == 10 and len(set(ids)) == 10
    assert ids == sorted(ids)
    assert [e.text_a for e in c] != [e.text_a for e in a]
    assert all(e.label == int(e.text_a[1:]) % 2 for e in a)
    assert len(load_glue_examples("sst2", "train", tmp_path, max_examples=500)) == 50


def test_encode_and_dynamic_padding(glue_dir, tokenizer):
    enc = encode_examples(load_glue_examples("sst2", "dev", glue_dir), tokenizer, max_length=8)
    # [CLS] a good movie [SEP] / [CLS] [UNK] bad [UNK] one [SEP] ('"' is its own token) / ...
    assert enc.input_ids == [[2, 5, 6, 8, 3], [2, 1, 7, 1, 9, 3], [2, 10, 3]]
    assert enc.lengths == [5, 6, 3] and enc.labels == [1, 0, 1]
    batch = enc.collate([0, 2])
    assert batch["input_ids"].tolist() == [[2, 5, 6, 8, 3], [2, 10, 3, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 1]
    short = encode_examples(load_glue_examples("sst2", "dev", glue_dir), tokenizer, max_length=4)
    assert short.lengths == [4, 4, 3] and short.input_ids[1] == [2, 1, 7, 3]


def test_pair_encoding_and_regression_labels(glue_dir, tokenizer):
    enc = encode_examples(load_glue_examples("stsb", "dev", glue_dir), tokenizer)
    assert enc.is_regression and enc.labels == [4.75, 0.5]
    batch = enc.collate([0, 1])
    assert batch["labels"].dtype == torch.float32
    # [CLS] a man . [SEP] | a guy . [SEP]  (man, guy, "." are [UNK])
    assert batch["token_type_ids"].tolist() == [[0] * 5 + [1] * 4] * 2
    assert batch["input_ids"][0].tolist() == [2, 5, 1, 1, 3, 5, 1, 1, 3]


def test_eval_loader_groups_by_length_and_keeps_labels_aligned(tmp_path, tokenizer):
    lengths = [5, 1, 3, 1, 4, 2, 5, 3, 2]
    rows = [["sentence", "label"]] + [[" ".join(["very"] * n), str(n % 2)] for n in lengths]
    _write(tmp_path / "SST-2" / "dev.tsv", rows)
    enc = encode_examples(load_glue_examples("sst2", "dev", tmp_path), tokenizer)
    batches = list(make_loader(enc, batch_size=4, shuffle=False))
    assert [b["input_ids"].shape for b in batches] == [(4, 4), (4, 7), (1, 7)]
    words = [b["attention_mask"].sum(1) - 2 for b in batches]
    assert torch.cat(words).tolist() == [1, 1, 2, 2, 3, 3, 4, 5, 5]
    labels = torch.cat([b["labels"] for b in batches])
    assert labels.tolist() == [n % 2 for n in torch.cat(words).tolist()]
    assert sum(b["attention_mask"].numel() for b in batches) == 4 * 4 + 4 * 7 + 7  # vs 9 * 7 unsorted


def test_train_loader_shuffle_is_seeded(tmp_path, tokenizer):
    rows = [["sentence", "label"]] + [[" ".join(["very"] * (i + 1)), "1"] for i in range(12)]
    _write(tmp_path / "SST-2" / "train.tsv", rows)
    enc = encode_examples(load_glue_examples("sst2", "train", tmp_path), tokenizer)

    def order(seed):
        loader = make_loader(enc, batch_size=5, shuffle=True, seed=seed)
        epochs = [[x for b in loader for x in (b["attention_mask"].sum(1) - 3).tolist()]
                  for _ in range(2)]
        return epochs

    first = order(7)
    assert first == order(7)
    assert sorted(first[0]) == list(range(12)) and first[0] != first[1]
    assert first[0] != order(8)[0]


def test_metrics_hand_computed():
    labels, preds = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # TP=2 TN=1 FP=1 FN=1 -> mcc = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert compute_metrics("cola", preds, labels) == {"mcc": pytest.approx(1 / 6, abs=1e-12)}
    mrpc = compute_metrics("MRPC", preds, labels)
    assert mrpc["accuracy"] == pytest.approx(0.6) and mrpc["f1"] == pytest.approx(2 / 3)
    assert mrpc["acc_and_f1"] == pytest.approx((0.6 + 2 / 3) / 2)
    assert compute_metrics("rte", preds, labels) == {"accuracy": pytest.approx(0.6)}
    # pearson: dx=[-3,-2,-1,6], dy=[-1.5,.5,-.5,1.5] -> 13/sqrt(50*5); ranks swap 2<->3 -> 0.8
    sts = compute_metrics("sts-b", [1.0, 2.0, 3.0, 10.0], [1.0, 3.0, 2.0, 4.0])
    assert sts["pearson"] == pytest.approx(13 / math.sqrt(250), abs=1e-12)
    assert sts["spearmanr"] == pytest.approx(0.8, abs=1e-12)
    assert sts["pearson_and_spearman"] == pytest.approx((13 / math.sqrt(250) + 0.8) / 2)
    assert math.isnan(compute_metrics("stsb", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0])["pearson"])
    with pytest.raises(ValueError, match="1-D of equal length"):
        compute_metrics("sst2", [[0.1, 0.9]], [1])


def test_predictions_from_logits_and_headlines():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    assert predictions_from_logits("mnli", logits).tolist() == [1, 0, 2]
    assert predictions_from_logits("stsb", torch.tensor([[1.5], [4.0]])).tolist() == [1.5, 4.0]
    assert [headline_metric(t) for t in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli-m")] == [
        "mcc", "accuracy", "acc_and_f1", "acc_and_f1", "pearson_and_spearman", "accuracy"]
    assert headline_value("mrpc", {"accuracy": 0.6, "f1": 0.8, "acc_and_f1": 0.7}) == 0.7
    results = {"cola": {"mcc": 1 / 6}, "mrpc": {"acc_and_f1": 19 / 30},
               "mnli-m": {"accuracy": 0.8}, "mnli-mm": {"accuracy": 0.6}}
    # MNLI counts once, as the mean of matched and mismatched
    assert glue_average(results) == pytest.approx((1 / 6 + 19 / 30 + 0.7) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="lack 'mcc'"):
        glue_average({"cola": {"accuracy": 0.5}})


@pytest.mark.slow
def test_real_glue_dev_counts():
    if not REAL_GLUE.is_dir():
        pytest.skip(f"{REAL_GLUE} not present")
    sst2 = load_glue_examples("sst2", "dev", REAL_GLUE)
    mrpc = load_glue_examples("mrpc", "dev", REAL_GLUE)
    assert len(sst2) == 872 and sum(e.label for e in sst2) == 444
    assert len(mrpc) == 408 and sum(e.label for e in mrpc) == 279
    assert all(e.text_b for e in mrpc)
    with open(REAL_GLUE / "SST-2" / "dev.tsv", encoding="utf-8", newline="") as f:
        first = list(csv.reader(f, delimiter="\t", quotechar=None))[1]
    assert (sst2[0].text_a, sst2[0].label) == (first[0], int(first[1]))
