"""Least-squares reconstruction after row pruning (pruning/reconstruct.py)."""
import copy

import pytest
import torch
from torch import nn
from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, GPT2Config, GPT2Model

from analogformer.pruning import PruneConfig, PruningMasks, compact, linear_weight, prune, reconstruct


class Two(nn.Module):
    """x -> fc1 -> fc2, the shape of a transformer FFN without the nonlinearity."""

    def __init__(self, a: nn.Linear, b: nn.Linear):
        super().__init__()
        self.fc1, self.fc2 = a, b

    def forward(self, x):
        return self.fc2(self.fc1(x))


def _row_mask(out_f, in_f, removed):
    m = torch.ones(out_f, in_f, dtype=torch.bool)
    m[:, removed] = False
    return m


def test_redundant_row_is_reconstructed_exactly_and_stays_zero():
    """Input 3 = input 0 + input 1 and input 4 is the constant 2: removing both loses
    nothing that the kept rows and the bias cannot carry."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    x[:, 3] = x[:, 0] + x[:, 1]
    x[:, 4] = 2.0
    lin = nn.Linear(5, 3)
    dense = nn.Sequential(lin)
    model = copy.deepcopy(dense)
    masks = PruningMasks({"0": _row_mask(3, 5, [3, 4])})
    masks.apply(model)
    w, b = lin.weight.detach(), lin.bias.detach()
    err = reconstruct(model, dense, masks, [x], damping=1e-9)["0"]
    assert err["masked"] > 0.1 and err["reconstructed"] < 1e-12 and err["frames"] == 400
    w_new, b_new = model[0].weight.detach(), model[0].bias.detach()
    torch.testing.assert_close(w_new[:, 0], w[:, 0] + w[:, 3])
    torch.testing.assert_close(w_new[:, 1], w[:, 1] + w[:, 3])
    torch.testing.assert_close(w_new[:, 2], w[:, 2])
    torch.testing.assert_close(b_new, b + 2.0 * w[:, 4])
    assert torch.equal(w_new[:, 3:], torch.zeros(3, 2))
    torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=0)


def test_least_squares_formula_and_damping_limit():
    """Closed form against torch.linalg.lstsq; a huge damping leaves the masked weights."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    dense = nn.Sequential(nn.Linear(6, 4, bias=False))
    masks = PruningMasks({"0": _row_mask(4, 6, [1, 4])})
    model = copy.deepcopy(dense)
    masks.apply(model)
    reconstruct(model, dense, masks, [x[:150], x[150:]], damping=1e-12, relative=False)  # batches add up
    kept = [0, 2, 3, 5]
    y = dense(x).detach().double()
    ref = torch.linalg.lstsq(x[:, kept].double(), y).solution.T
    torch.testing.assert_close(model[0].weight.detach()[:, kept].double(), ref, atol=1e-5, rtol=1e-5)
    # relative (default): the same least squares on frames scaled by 1/‖y_f‖
    rel = copy.deepcopy(dense)
    masks.apply(rel)
    report = reconstruct(rel, dense, masks, [x], damping=1e-12)["0"]
    wf = 1 / y.norm(dim=1, keepdim=True)
    ref_rel = torch.linalg.lstsq(x[:, kept].double() * wf, y * wf).solution.T
    torch.testing.assert_close(rel[0].weight.detach()[:, kept].double(), ref_rel, atol=1e-5, rtol=1e-5)
    resid = ((x[:, kept].double() @ ref_rel.T - y).norm(dim=1) ** 2 / y.norm(dim=1) ** 2).mean()
    assert report["reconstructed"] == pytest.approx(resid.item(), rel=1e-6)
    stiff = copy.deepcopy(dense)
    masks.apply(stiff)
    before = stiff[0].weight.detach().clone()
    reconstruct(stiff, dense, masks, [x], damping=1e12)
    torch.testing.assert_close(stiff[0].weight.detach(), before, atol=1e-6, rtol=0)


def test_sequential_refit_corrects_the_layers_before():
    """fc2 is refit on the *pruned* model's inputs: after fc1 lost a column (coupled
    pruning), fc2's refit still aims at the dense output."""
    torch.manual_seed(2)
    dense = Two(nn.Linear(4, 6), nn.Linear(6, 3))
    x = torch.randn(500, 4)
    model = copy.deepcopy(dense)
    # fc2 loses rows 1 and 4, fc1 the matching output columns (the coupled FFN case)
    fc1_mask = torch.ones(6, 4, dtype=torch.bool)
    fc1_mask[[1, 4]] = False
    masks = PruningMasks({"fc1": fc1_mask, "fc2": _row_mask(3, 6, [1, 4])},
                         {"fc1": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)})
    masks.apply(model)
    masked_err = (model(x) - dense(x)).pow(2).mean().item()
    report = reconstruct(model, dense, masks, [x], damping=1e-9)
    assert list(report) == ["fc2"]  # fc1 loses outputs, not rows: nothing to refit there
    # fc1 has rank-4 outputs: the 4 kept fc1 units span the whole input space, so the
    # dense output is reachable exactly
    assert (model(x) - dense(x)).pow(2).mean().item() < 1e-8 < masked_err
    assert torch.equal(model.fc1.weight.detach()[[1, 4]], torch.zeros(2, 4))


def _bert_batches(n=3):
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (4, 12), generator=g)
        am = torch.ones_like(ids)
        am[1, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": am})
    return out


@pytest.mark.parametrize("family", ["bert", "albert", "gpt2"])
def test_ffn_pruning_with_reconstruction_is_closer_to_dense(family):
    torch.manual_seed(0)
    if family == "bert":
        dense = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)).eval()
    elif family == "albert":  # one FFN shared by every layer: one refit over all its calls
        dense = AlbertModel(AlbertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, intermediate_size=64,
                                         embedding_size=16)).eval()
    else:  # Conv1D weights, refit through the transposed view
        dense = GPT2Model(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2)).eval()
    batches = _bert_batches()
    if family == "gpt2":
        batches = [{"input_ids": b["input_ids"]} for b in batches]
    cfg = PruneConfig(criterion="magnitude", structure="rows", ratio=0.5, blocks=("fc2",),
                      reconstruct=True)
    masked = copy.deepcopy(dense)
    masks = prune(masked, cfg)
    refit = copy.deepcopy(masked)
    report = reconstruct(refit, dense, masks, batches)
    assert report and all(e["reconstructed"] < e["masked"] for e in report.values())
    held_out = {"input_ids": torch.randint(1, 100, (4, 12), generator=torch.Generator().manual_seed(9))}
    with torch.no_grad():
        ref = dense(**held_out).last_hidden_state
        e_mask = (masked(**held_out).last_hidden_state - ref).pow(2).mean()
        e_fit = (refit(**held_out).last_hidden_state - ref).pow(2).mean()
    assert e_fit < 0.7 * e_mask
    for name, m in masks.weight.items():  # masks still hold: removed rows exactly zero
        w = linear_weight(dict(refit.named_modules())[name]).detach()
        assert torch.equal(w[~m], torch.zeros(int((~m).sum())))
    if family == "bert":  # compaction of the refit model is exact
        with torch.no_grad():
            before = refit(**held_out).last_hidden_state
            compact(refit, masks)
            torch.testing.assert_close(refit(**held_out).last_hidden_state, before, atol=1e-5, rtol=1e-5)


def test_reconstruct_errors():
    dense = nn.Sequential(nn.Linear(4, 3))
    x = [torch.randn(10, 4)]
    irregular = torch.ones(3, 4, dtype=torch.bool)
    irregular[0, 1] = False
    irregular[:, 2] = False
    with pytest.raises(ValueError, match="'0' is not row-structured"):
        reconstruct(copy.deepcopy(dense), dense, PruningMasks({"0": irregular}), x)
    with pytest.raises(ValueError, match="no crossbar row"):
        reconstruct(copy.deepcopy(dense), dense, PruningMasks({"0": torch.ones(3, 4, dtype=torch.bool)}), x)
    ok = PruningMasks({"0": _row_mask(3, 4, [2])})
    with pytest.raises(ValueError, match="damping"):
        reconstruct(copy.deepcopy(dense), dense, ok, x, damping=0)
    with pytest.raises(ValueError, match="no batch"):
        reconstruct(copy.deepcopy(dense), dense, ok, [])
    with pytest.raises(ValueError, match="not in both models"):
        reconstruct(copy.deepcopy(dense), nn.Sequential(), ok, x)
    with pytest.raises(ValueError, match="PruneConfig.reconstruct: .*irregular"):
        PruneConfig(criterion="magnitude", structure="irregular", reconstruct=True)
    with pytest.raises(ValueError, match="reconstruct_damping"):
        PruneConfig(reconstruct=True, reconstruct_damping=-1.0)
