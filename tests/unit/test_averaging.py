"""Weight averaging (FinetuneConfig.ema_decay): the recursion, what is scored and kept, masks."""
import pytest
import torch

from analogformer.training.averaging import WeightAverage
from analogformer.training.finetune import FinetuneConfig, finetune
from analogformer.tasks import encode_examples, make_loader
from test_finetune import tiny_model, toy_examples, tokenizer  # noqa: F401  (fixture)

BASE = dict(learning_rate=3e-3, epochs=2, batch_size=8, seed=3)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _ema_of(states, decay):
    """The EMA recursion from the start state over the states after every step, as in the spec
    ema <- d * ema + (1 - d) * params (same op, lerp, so the comparison can be exact)."""
    avg = {k: v.clone() for k, v in states[0].items()}
    for s in states[1:]:
        for k in avg:
            avg[k].lerp_(s[k], 1.0 - decay)
    return avg


def _run(tokenizer, ema=None, after=None, **kw):
    train = encode_examples(toy_examples(40), tokenizer)
    model = tiny_model(seed=1)
    states = [_params(model)]

    def after_step(m):
        if after is not None:
            after(m)
        states.append(_params(m))

    cfg = FinetuneConfig(**BASE, ema_decay=ema, **{k: v for k, v in kw.items() if k != "score"})
    hist = finetune(model, make_loader(train, 8, True, seed=2), cfg, after_step=after_step,
                    progress=False, score=kw.get("score"))
    return model, hist, states


def test_the_model_ends_with_the_exponential_average_and_the_trajectory_is_unchanged(tokenizer):
    plain, h0, s0 = _run(tokenizer)
    model, h1, s1 = _run(tokenizer, ema=0.8)
    assert h1.losses == h0.losses  # the live weights train exactly as without averaging
    assert all(torch.equal(a[k], b[k]) for a, b in zip(s0, s1) for k in a)
    expected = _ema_of(s1, 0.8)
    got = _params(model)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not all(torch.equal(got[k], s1[-1][k]) for k in got)  # not the last live state
    assert not model.training


def test_dev_evaluations_score_the_averaged_weights_and_keep_best_keeps_them(tokenizer):
    seen = []

    def score(m):
        seen.append(_params(m))
        return [0.1, 0.9, 0.2, 0.3, 0.4, 0.5][len(seen) - 1]  # steps 0, 3, 6, 9, 10 (end)

    model, hist, states = _run(tokenizer, ema=0.7, eval_every=3, keep_best=True, score=score)
    _, h0, s0 = _run(tokenizer)
    assert hist.losses == h0.losses  # swapping the average in for evaluations changes nothing
    assert [s for s, _ in hist.evals] == [0, 3, 6, 9, 10] and hist.best_step == 3
    for (step, _), scored in zip(hist.evals, seen):
        expected = _ema_of(states[:step + 1], 0.7)
        assert all(torch.equal(scored[k], expected[k]) for k in expected)
    kept = _params(model)
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)


def test_a_fixed_mask_holds_in_the_average(tokenizer):
    rows = slice(0, 20)

    def mask(m):
        with torch.no_grad():
            for layer in m.bert.encoder.layer:
                layer.output.dense.weight[:, rows] = 0

    train = encode_examples(toy_examples(40), tokenizer)
    model = tiny_model(seed=1)
    mask(model)
    finetune(model, make_loader(train, 8, True, seed=2), FinetuneConfig(**BASE, ema_decay=0.9),
             after_step=mask, progress=False)
    for layer in model.bert.encoder.layer:
        w = layer.output.dense.weight
        assert torch.count_nonzero(w[:, rows]) == 0 and torch.count_nonzero(w[:, 20:]) > 0


def test_swapped_restores_the_live_weights():
    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    live = model.weight.detach().clone()
    avg.update()
    with avg.swapped():
        assert torch.allclose(model.weight, live - 0.5)
    assert torch.equal(model.weight, live)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.9", True])
def test_bad_ema_decay_is_an_error_naming_the_field(bad):
    with pytest.raises(ValueError, match="ema_decay must be in"):
        FinetuneConfig(ema_decay=bad)
