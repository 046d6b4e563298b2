"""SQuAD v1.1: the official EM / F1 definition (hand-made cases and a saved prediction
file), answer extraction from constructed logits, the by-article split, the sliding-window
encoding, and the registered task on a tiny BERT and a tiny MobileBERT."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertTokenizer

from analogformer.tasks import find_task
from analogformer.tasks.squad import SquadTask, predict_answers
from analogformer.tasks.squad_data import (QAExample, encode_squad, load_squad_examples, read_squad_json,
                                           split_articles)
from analogformer.tasks.squad_eval import (WindowLogits, answer_from_logits, exact_match, f1, normalize_answer,
                                           references_from_json, score_question, squad_scores)

FIXTURE = Path(__file__).parents[1] / "data" / "squad"
REAL_SQUAD = Path(__file__).parents[2].parent / "shared" / "data" / "squad_v1.1"


# ---------------------------------------------------------------- the official definition

@pytest.mark.parametrize("text, norm", [
    ("The Eiffel Tower", "eiffel tower"),          # lower case, article dropped
    ("an apple, a pear!", "apple pear"),            # articles and punctuation
    ("  Theory of  the  Atom. ", "theory of atom"),  # "the" as a word only; "Theory" stays
    ("U.S.A.", "usa"),                              # punctuation removed, not replaced by space
    ("1,000 (approx.)", "1000 approx"),
    ("Beyoncé", "beyoncé"),                         # non-ASCII letters kept
    ("a", ""), ("", ""),
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match_and_f1_hand_made():
    assert exact_match("the Denver Broncos.", "Denver broncos") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    assert f1("Broncos", "Denver Broncos") == pytest.approx(2 * 1 * 0.5 / 1.5)
    # bag of tokens with multiplicity: pred "a b b" vs ref "b c": shared 1 -> P 1/3, R 1/2
    assert f1("x y y", "y z") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert f1("y y", "y y z") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert f1("", "Denver") == 0.0 and exact_match("", "Denver") == 0.0     # empty prediction
    assert exact_match("the", "a") == 1.0 and f1("the", "a") == 0.0          # both normalise to ""


def test_max_over_references():
    em, f = score_question("thousand years ago", ["1,000 years", "a thousand years", "one thousand years"])
    assert em == 0.0 and f == pytest.approx(0.8)
    assert score_question("Denver", ["Broncos", "denver"]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="reference"):
        score_question("x", [])


def test_saved_prediction_file_scores_as_computed_by_hand():
    dataset = json.loads((FIXTURE / "mini-dev-v1.1.json").read_text(encoding="utf-8"))
    predictions = json.loads((FIXTURE / "mini-predictions.json").read_text())
    expected = json.loads((FIXTURE / "expected.json").read_text())
    got = squad_scores(references_from_json(dataset), predictions)
    assert got["exact_match"] == pytest.approx(100 * 2 / 7) == pytest.approx(expected["exact_match"])
    assert got["f1"] == pytest.approx(100 * 43 / 105) == pytest.approx(expected["f1"])
    with pytest.raises(ValueError, match="references lack"):
        squad_scores(references_from_json(dataset), {**predictions, "nope": "x"})


# ---------------------------------------------------------------- answers from logits

CONTEXT = "red fox runs far away"
# [CLS] q q [SEP] red fox runs far away [SEP]
OFFSETS = [None, None, None, None, (0, 3), (4, 7), (8, 12), (13, 16), (17, 21), None]


def _window(start: dict, end: dict, offsets=OFFSETS, width=None):
    s, e = np.zeros(width or len(offsets)), np.zeros(width or len(offsets))
    for k, v in start.items():
        s[k] = v
    for k, v in end.items():
        e[k] = v
    return WindowLogits(s, e, offsets)


def test_best_span_by_start_plus_end_logit():
    w = _window({5: 4.0, 4: 3.0}, {6: 4.0, 5: 2.0})
    assert answer_from_logits(CONTEXT, [w]) == "fox runs"       # 4 + 4 beats 3 + 4 and 4 + 2


def test_spans_outside_the_context_and_reversed_spans_are_never_chosen():
    # the largest logits sit on [CLS] and on question tokens; end before start is invalid
    w = _window({0: 50.0, 1: 40.0, 7: 5.0, 4: 1.0}, {0: 50.0, 2: 40.0, 5: 6.0, 4: 0.5})
    assert answer_from_logits(CONTEXT, [w]) == "red fox"        # (4, 5): 1 + 6; (7, 5) reversed
    # padding beyond the window's tokens is ignored even with the largest logits
    w = _window({4: 1.0, 11: 99.0}, {4: 1.0, 12: 99.0}, width=14)
    assert answer_from_logits(CONTEXT, [w]) == "red"


def test_max_answer_length_is_honoured():
    w = _window({4: 10.0, 7: 2.0}, {8: 10.0, 7: 1.0, 4: 0.5})
    assert answer_from_logits(CONTEXT, [w], max_answer_length=5) == "red fox runs far away"   # (4, 8): 20
    # at most 3 tokens: (7, 8) 2 + 10 beats (4, 4) 10 + 0.5 and (4, 5) 10 + 0
    assert answer_from_logits(CONTEXT, [w], max_answer_length=3) == "far away"
    # one token: (4, 4) 10.5 beats (8, 8) 10 and (7, 7) 3
    assert answer_from_logits(CONTEXT, [w], max_answer_length=1) == "red"


def test_n_best_limits_the_candidates():
    w = _window({0: 9.0, 1: 8.0, 6: 1.0}, {0: 9.0, 1: 8.0, 6: 1.0})
    assert answer_from_logits(CONTEXT, [w], n_best=3) == "runs"
    # with 2 candidates only [CLS] and a question token are considered: no valid span
    assert answer_from_logits(CONTEXT, [w], n_best=2) == ""


def test_windows_of_one_question_are_merged():
    # two overlapping windows of a longer context: the best span over both wins, cut out
    # of the context by that window's offsets
    context = "alpha beta gamma delta epsilon"
    w1 = WindowLogits(np.array([0, 0, 3.0, 0, 0]), np.array([0, 0, 0, 3.0, 0]),
                      [None, None, (0, 5), (6, 10), (11, 16)])
    w2 = WindowLogits(np.array([0, 0, 0, 4.0, 0]), np.array([0, 0, 0, 0, 4.0]),
                      [None, None, (11, 16), (17, 22), (23, 30)])
    assert answer_from_logits(context, [w1, w2]) == "delta epsilon"
    assert answer_from_logits(context, [w1]) == "alpha beta"
    assert answer_from_logits(context, []) == ""


# ---------------------------------------------------------------- the by-article split

def _squad_file(path: Path, n_articles: int, per_article: int = 2):
    data = [{"title": f"Article_{a}", "paragraphs": [{"context": f"the answer is word{a} here .", "qas": [
        {"id": f"{a}-{q}", "question": "what is the answer ?", "answers": [{"answer_start": 14, "text": f"word{a}"}]}
        for q in range(per_article)]}]} for a in range(n_articles)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return data


def test_split_by_article_is_deterministic_disjoint_and_order_free(tmp_path):
    data = _squad_file(tmp_path / "a" / "dev-v1.1.json", 20)
    train = load_squad_examples("train", tmp_path / "a")
    dev = load_squad_examples("dev", tmp_path / "a")
    assert {e.title for e in train}.isdisjoint({e.title for e in dev})
    assert len({e.title for e in dev}) == 4 and len(train) + len(dev) == 40      # 20 % of 20 articles
    # the same articles in another file order split the same way
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": data[::-1]}))
    assert {e.id for e in load_squad_examples("dev", tmp_path / "b")} == {e.id for e in dev}
    tune, evaluate = split_articles([f"Article_{a}" for a in range(20)])
    assert sorted(evaluate) == sorted({e.title for e in dev}) and len(tune) == 16
    # a seeded subset of questions, the same one every time
    sub = load_squad_examples("dev", tmp_path / "a", max_examples=3, seed=1)
    assert len(sub) == 3 and sub == load_squad_examples("dev", tmp_path / "a", max_examples=3, seed=1)


def test_a_folder_with_the_train_file_uses_the_official_split(tmp_path):
    _squad_file(tmp_path / "dev-v1.1.json", 5)
    _squad_file(tmp_path / "train-v1.1.json", 7, per_article=1)
    assert len(load_squad_examples("train", tmp_path)) == 7 and len(load_squad_examples("dev", tmp_path)) == 10


def test_missing_or_malformed_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"dev-v1.1.json does not exist.*squad_dir"):
        load_squad_examples("dev", tmp_path)
    (tmp_path / "dev-v1.1.json").write_text('{"data": [{"title": "x"}]}')
    with pytest.raises(ValueError, match="not a SQuAD v1.1 JSON file"):
        load_squad_examples("dev", tmp_path)
    with pytest.raises(ValueError, match="splits 'train' and 'dev'"):
        load_squad_examples("test", tmp_path)


def test_real_dev_set_split():
    if not (REAL_SQUAD / "dev-v1.1.json").is_file():
        pytest.skip(f"{REAL_SQUAD} not present")
    articles = read_squad_json(REAL_SQUAD / "dev-v1.1.json")
    tune, evaluate = split_articles(list(articles))
    assert (len(articles), len(tune), len(evaluate)) == (48, 38, 10)
    assert sum(len(articles[t]) for t in tune) == 8992 and sum(len(articles[t]) for t in evaluate) == 1578
    assert set(tune).isdisjoint(evaluate)


# ---------------------------------------------------------------- encoding and the task

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "colour", "?", ".", "red", "blue",
         "green", "sky", "grass", "and", "of", "a", "car", "house", "big", "small", "tree"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizer(vocab=str(vocab))  # transformers 5: a fast (tokenizers) tokenizer
    assert tok.is_fast and tok.vocab_size == len(WORDS)
    return tok


def _long_example():
    filler = "the big car and the small house . " * 6
    context = filler + "the colour is red . " + filler
    return QAExample("x1", "T", context, " what is the colour ?", ("red",), (context.index("red"),))


def test_sliding_windows_hold_the_answer_positions(tok):
    ex = _long_example()
    feats = encode_squad([ex], tok, max_length=24, doc_stride=8, training=True)
    assert len(feats) > 3 and all(n <= 24 for n in feats.lengths)
    holding = [f for f in range(len(feats)) if feats.starts[f] > 0]
    assert holding and len(holding) < len(feats)          # windows without the answer point at [CLS]
    for f in holding:
        s, e = feats.starts[f], feats.ends[f]
        assert ex.context[feats.offsets[f][s][0]:feats.offsets[f][e][1]] == "red"
    for f in range(len(feats)):
        if f not in holding:
            assert (feats.starts[f], feats.ends[f]) == (0, 0)
    # consecutive windows overlap by doc_stride context tokens
    ctx = [[o for o in offs if o is not None] for offs in feats.offsets]
    assert ctx[0][-8:] == ctx[1][:8]
    batch = feats.collate([0, 1])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}


def test_a_slow_tokenizer_and_a_large_stride_are_refused(tok):
    slow = SimpleNamespace(is_fast=False, pad_token_id=0)  # no character offsets
    with pytest.raises(ValueError, match="fast tokenizer"):
        encode_squad([_long_example()], slow, 24, 8, training=False)
    with pytest.raises(ValueError, match="doc_stride"):
        encode_squad([_long_example()], tok, 24, 12, training=False)


def test_predict_answers_merges_windows_and_scores_exactly(tok):
    ex = _long_example()
    other = QAExample("x2", "T", "the sky is blue and the grass is green .", "what colour is the sky ?",
                      ("blue", "Blue."), (11, 11))
    feats = encode_squad([ex, other], tok, max_length=24, doc_stride=8, training=False)
    task = find_task("squad").task
    batches = list(task.loader(feats, 3, shuffle=False))
    assert all(b["squad"] is feats for b in batches)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            assert not self.training
            b, n = input_ids.shape
            s, e = torch.zeros(b, n), torch.zeros(b, n)
            for row in range(b):  # find the window by its tokens; mark the answer word
                f = next(f for f in range(len(feats)) if feats.input_ids[f] == input_ids[row, :feats.lengths[f]].tolist()
                         and f not in used)
                used.add(f)
                q = feats.examples[feats.example_index[f]]
                a0 = q.answer_starts[0]
                for k, o in enumerate(feats.offsets[f]):
                    if o is not None and o[0] == a0:
                        s[row, k] = e[row, k] = 10.0
            return SimpleNamespace(start_logits=s, end_logits=e)

    used = set()
    answers = predict_answers(Model(), batches)
    assert answers == {"x1": "red", "x2": "blue"}
    used.clear()
    assert task.evaluate(Model(), batches, "squad") == {"f1": 1.0, "exact_match": 1.0}


def test_registered_task_and_models(tok, tmp_path):
    from transformers import BertConfig, MobileBertConfig, AutoModelForQuestionAnswering
    from analogformer import AnalogConfig, analog_layers, analogize, drift, program

    ref = find_task("SQuAD1.1")
    assert isinstance(ref.task, SquadTask) and ref.task.headline_metric("squad") == "f1"
    assert ref.task.higher_is_better and ref.eval_sets() == {"squad": "dev"}
    data = SimpleNamespace(squad_dir=str(tmp_path), max_length=24, doc_stride=8)
    _squad_file(tmp_path / "dev-v1.1.json", 5)
    for cfg in (BertConfig(vocab_size=len(WORDS) + 10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32),
                MobileBertConfig(vocab_size=len(WORDS) + 10, hidden_size=16, embedding_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=16, intra_bottleneck_size=8,
                                 true_hidden_size=8, num_feedforward_networks=1, max_position_embeddings=32)):
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(cfg)
        train = ref.task.dataset("train", tok, data, None, 0)
        batch = next(iter(ref.task.loader(train, 4, shuffle=True, seed=0)))
        assert model(**batch).loss.ndim == 0                       # training batches carry the positions
        analog = analogize(model, AnalogConfig())
        names = [n for n, _ in analog_layers(analog)]
        assert names and not any("qa_outputs" in n for n in names)  # the QA head stays digital
        program(analog, seed=0)
        drift(analog, 3600.0)
        dev = ref.task.dataset("dev", tok, data, None, 0)
        metrics = ref.task.evaluate(analog, list(ref.task.loader(dev, 4, shuffle=False)), "squad")
        assert set(metrics) == {"f1", "exact_match"} and 0 <= metrics["exact_match"] <= metrics["f1"] <= 1


def test_hub_path_reads_the_squad_dataset_and_fails_clearly(monkeypatch):
    import sys
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"id": "h1", "title": "T", "context": "red fox", "question": "what ?",
                 "answers": {"text": ["red"], "answer_start": [0]}}]

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    got = load_squad_examples("dev", None)
    assert calls == [("squad", "validation")]
    assert got == [QAExample("h1", "T", "red fox", "what ?", ("red",), (0,))]
    load_squad_examples("train", None)
    assert calls[-1] == ("squad", "train")

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=offline))
    with pytest.raises(RuntimeError, match="squad_dir to a local folder"):
        load_squad_examples("dev", None)
