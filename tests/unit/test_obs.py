"""Structured OBS row criterion: greedy least-squares replaceability of crossbar rows."""
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from analogformer.pruning import PruneConfig, calibrate, compute_masks, reconstruct, prune
from analogformer.pruning.mac import MacStats
from analogformer.pruning.obs import GreedyRows, greedy_row_order, remove_globally

FC2 = "encoder.layer.{}.output.dense"


def gram_of(x, y):
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1) / y.norm(dim=1, keepdim=True)
    return xt.T @ xt


def refit_error(w, b, x, keep):
    """Weighted least-squares error of refitting the kept rows + bias to y = x Wᵀ + b."""
    y = x @ w.T + b
    wf = 1 / y.norm(dim=1, keepdim=True)
    xt = torch.cat([x[:, keep], torch.ones(x.shape[0], 1, dtype=x.dtype)], 1) * wf
    sol = torch.linalg.lstsq(xt, y * wf).solution
    return float(((xt @ sol - y * wf) ** 2).sum())


def test_greedy_obs_matches_brute_force_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64)
    x[:, 4] = 0.7 * x[:, 1] - 0.2 * x[:, 3] + 0.05 * torch.randn(400, generator=g, dtype=torch.float64)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    h = gram_of(x, x @ w.T + b)
    scores = greedy_row_order(w, h, count=3, damping=1e-9)
    order = torch.argsort(scores)[:3].tolist()
    removed = []
    for step in range(3):  # each greedy step removes the row whose loss least squares can least replace
        errs = {j: refit_error(w, b, x, [k for k in range(6) if k not in removed + [j]])
                for j in range(6) if j not in removed}
        best = min(errs, key=errs.get)
        assert order[step] == best
        removed.append(best)
    assert scores[order].tolist() == [0.0, 1.0, 2.0] and (scores[[k for k in range(6) if k not in order]] >= 3).all()


def test_obs_removes_a_redundant_row_magnitude_and_mac_keep():
    """Input 1 duplicates input 0: either row can take over the other's weights exactly, so
    OBS removes one of them although both have large weights and contributions; the weak
    independent input 3 is what MAC and magnitude remove."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 0]
    w = torch.tensor([[2.0, 1.5, -1.0, 0.05], [1.0, 2.0, 0.5, -0.05]], dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    st = MacStats()
    st.update("m", w, x, y=x @ w.T + b)
    obs = torch.argsort(greedy_row_order(w, st["m"].gram, 1, damping=1e-9))[0].item()
    assert obs in (0, 1)
    assert torch.argmin(st["m"].row_score).item() == 3 and torch.argmin(w.abs().sum(0)).item() == 3
    assert refit_error(w, b, x, [k for k in range(4) if k != obs]) < 1e-20


def test_calibrate_accumulates_the_weighted_gram_of_the_real_frames():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    xs = [torch.randn(2, 4, 5, dtype=torch.float64) for _ in range(2)]
    stats = calibrate(nn.Sequential(lin), xs, ["0"], gram=True)
    x = torch.cat([t.reshape(-1, 5) for t in xs])
    with torch.no_grad():
        torch.testing.assert_close(stats["0"].gram, gram_of(x, lin(x)))
    assert calibrate(nn.Sequential(lin), xs, ["0"])["0"].gram is None  # off by default


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64)).eval()


def test_obs_rows_on_bert_couple_fc1_and_fit_better_than_mac_after_reconstruct():
    model = tiny_bert()
    batches = [{"input_ids": torch.randint(1, 100, (4, 16), generator=torch.Generator().manual_seed(k)),
                "attention_mask": torch.ones(4, 16, dtype=torch.long)} for k in range(4)]
    cfg = PruneConfig(criterion="obs", ratio=0.25, reconstruct=True)
    stats = calibrate(model, batches, cfg)
    assert stats[FC2.format(0)].gram.shape == (65, 65)
    masks = compute_masks(model, cfg, stats)
    for layer in range(2):
        gone = masks.removed_rows(FC2.format(layer))
        assert len(gone) == 16
        fc1 = masks.weight[f"encoder.layer.{layer}.intermediate.dense"]
        assert not fc1[gone].any() and fc1[[k for k in range(64) if k not in gone.tolist()]].all()
    errs = {}
    for crit in ("mac", "obs"):
        c = PruneConfig(criterion=crit, ratio=0.25)
        pruned = tiny_bert()
        m = prune(pruned, c, calibrate(pruned, batches, c))
        report = reconstruct(pruned, model, m, batches)
        errs[crit] = sum(r["reconstructed"] for r in report.values())
    assert errs["obs"] < 0.75 * errs["mac"]  # 0.0079 vs 0.0128 (summed relative output error)


def test_obs_errors_name_the_problem():
    with pytest.raises(ValueError, match="PruneConfig.structure"):
        PruneConfig(criterion="obs", structure="columns")
    model = tiny_bert()
    batches = [{"input_ids": torch.randint(1, 100, (2, 8))}]
    no_gram = calibrate(model, batches, PruneConfig(criterion="mac"))
    with pytest.raises(ValueError, match="Gram"):
        compute_masks(model, PruneConfig(criterion="obs"), no_gram)
    with pytest.raises(ValueError, match=r"Gram matrix of '.*output\.dense'.*calibrate"):
        compute_masks(model, PruneConfig(criterion="obs", scope="global"), no_gram)
    with pytest.raises(ValueError, match="needs calibration"):
        compute_masks(model, PruneConfig(criterion="obs"))
    with pytest.raises(ValueError, match=r"\(9, 9\)"):
        greedy_row_order(torch.ones(2, 8), torch.eye(4), 1)
    with pytest.raises(ValueError, match="0 to 7"):
        greedy_row_order(torch.ones(2, 8), torch.eye(9), 8)


def test_greedy_step_errors_are_the_increases_of_the_refit_error():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 7, generator=g, dtype=torch.float64)
    x[:, 5] = 0.5 * x[:, 0] + 0.1 * torch.randn(500, generator=g, dtype=torch.float64)
    w = torch.randn(4, 7, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    h = gram_of(x, x @ w.T + b)
    scores, errors = greedy_row_order(w, h, count=5, damping=1e-10, return_errors=True)
    order = torch.argsort(scores)[:5].tolist()
    before = 0.0
    for step in range(5):
        after = refit_error(w, b, x, [k for k in range(7) if k not in order[:step + 1]])
        assert errors[step].item() == pytest.approx(after - before, rel=1e-6, abs=1e-12)
        before = after
    assert torch.equal(greedy_row_order(w, h, count=5, damping=1e-10), scores)


def test_remove_globally_takes_the_cheapest_running_maximum_errors():
    """Lockstep removal over three matrices equals taking the `total` smallest entries of
    the matrices' running-maximum error sequences (computed in full), for every total."""
    g = torch.Generator().manual_seed(3)
    mats = []
    for n in (6, 9, 5):
        x = torch.randn(300, n, generator=g, dtype=torch.float64)
        x[:, 1] = x[:, 0] + 0.2 * torch.randn(300, generator=g, dtype=torch.float64)
        w = torch.randn(3, n, generator=g, dtype=torch.float64) * torch.rand(n, generator=g, dtype=torch.float64)
        mats.append((w, gram_of(x, x @ w.T)))
    full = [torch.cummax(greedy_row_order(w, h, damping=1e-6, return_errors=True)[1], 0).values
            for w, h in mats]
    owner = torch.cat([torch.full((len(e),), i) for i, e in enumerate(full)])
    for total in range(0, sum(len(e) for e in full) + 1):
        states = [GreedyRows(w, h, damping=1e-6) for w, h in mats]
        counts = remove_globally(states, total)
        expect = torch.bincount(owner[torch.argsort(torch.cat(full), stable=True)[:total]], minlength=3)
        assert counts == expect.tolist() and sum(counts) == total
        for (w, h), st, c in zip(mats, states, counts):  # each loses a prefix of its own order
            assert st.order == torch.argsort(greedy_row_order(w, h, damping=1e-6))[:c].tolist()
    with pytest.raises(ValueError, match="cannot remove 18"):
        remove_globally([GreedyRows(w, h) for w, h in mats], 18)
    # scaled errors: a matrix whose errors count 1000x less gives up its rows first
    w, h = mats[0]
    st = [GreedyRows(w, h, scale=1.0), GreedyRows(w, h, scale=1e-3)]
    assert remove_globally(st, 3) == [0, 3]


def test_obs_global_takes_the_rows_where_the_refit_loses_least():
    """Layer 0's FC2 gets 32 nearly silent rows: removing them costs (almost) nothing, so
    global OBS at 1/4 of both layers' 128 rows takes all 32 from layer 0 and none from
    layer 1, where "layer" scope would take 16 + 16; FC1 columns follow (coupled)."""
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 32:] *= 1e-4
    batches = [{"input_ids": torch.randint(1, 100, (4, 16), generator=torch.Generator().manual_seed(k)),
                "attention_mask": torch.ones(4, 16, dtype=torch.long)} for k in range(4)]
    cfg = PruneConfig(criterion="obs", ratio=0.25, scope="global", reconstruct=True)
    stats = calibrate(model, batches, cfg)
    masks = compute_masks(model, cfg, stats)
    gone0, gone1 = masks.removed_rows(FC2.format(0)), masks.removed_rows(FC2.format(1))
    assert len(gone1) == 0 and sorted(gone0.tolist()) == list(range(32, 64))
    assert not masks.weight["encoder.layer.0.intermediate.dense"][gone0].any()
    layer = compute_masks(model, PruneConfig(criterion="obs", ratio=0.25, reconstruct=True), stats)
    assert [len(layer.removed_rows(FC2.format(k))) for k in range(2)] == [16, 16]
    # the same greedy order: layer 0's first 16 removals are the layer-scope set
    assert set(layer.removed_rows(FC2.format(0)).tolist()) <= set(gone0.tolist())


def test_obs_global_nested_stages_keep_earlier_rows_removed():
    """Gradual pruning re-scores the pruned model with the earlier masks: the next stage
    removes a superset, and the block still loses exactly its share."""
    model = tiny_bert(1)
    batches = [{"input_ids": torch.randint(1, 100, (4, 16), generator=torch.Generator().manual_seed(k)),
                "attention_mask": torch.ones(4, 16, dtype=torch.long)} for k in range(3)]
    first = PruneConfig(criterion="obs", ratio=0.125, scope="global")
    m1 = prune(model, first, calibrate(model, batches, first))
    second = PruneConfig(criterion="obs", ratio=0.25, scope="global")
    m2 = prune(model, second, calibrate(model, batches, second), previous=m1)
    for k in range(2):
        assert set(m1.removed_rows(FC2.format(k)).tolist()) <= set(m2.removed_rows(FC2.format(k)).tolist())
    assert sum(len(m1.removed_rows(FC2.format(k))) for k in range(2)) == 16
    assert sum(len(m2.removed_rows(FC2.format(k))) for k in range(2)) == 32
