"""MAC analysis, criteria, masks, coupled FFN pruning, plots (tiny models, fast)."""
import struct

import pytest
import torch
from torch import nn
from transformers import (AlbertConfig, AlbertModel, BertConfig, BertModel, GPT2Config,
                          GPT2Model, LlamaConfig, LlamaModel)

from analogformer.pruning import (MacStats, PruneConfig, PruningMasks, calibrate,
                                  capture_frames, compute_masks, linear_weight, mac_delta,
                                  mac_unit_scores, product_elements, prune, unit_scores)
from analogformer.report.figures import plot_delta_heatmap, plot_product_curves
from analogformer.pruning.mac import LayerStats

FC2 = "encoder.layer.{}.output.dense"
FC1 = "encoder.layer.{}.intermediate.dense"


def tiny_bert(seed=0, layers=2):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64)).eval()


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ---------------------------------------------------------------- MAC analysis
W = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
X = torch.tensor([[1.0, 1.0], [1.0, -2.0]], dtype=torch.float64)  # y = [3,2], [-3,5]
DELTA = torch.tensor([[2 / 3, 2.0], [2.1, 0.9]], dtype=torch.float64)


def test_mac_delta_hand_example():
    torch.testing.assert_close(mac_delta(W, X), DELTA, rtol=0, atol=1e-12)
    rows, cols = mac_unit_scores(W, X)
    torch.testing.assert_close(rows, torch.tensor([2 / 3 + 2.1, 2.0 + 0.9], dtype=torch.float64))
    torch.testing.assert_close(cols, torch.tensor([8 / 3, 3.0], dtype=torch.float64))


def test_mac_stats_stream_equals_one_shot_and_eps_guard():
    st = MacStats(eps=1e-6)
    st.update("m", W, X[:1], keep_delta=True)
    st.update("m", W, X[1:], keep_delta=True)
    torch.testing.assert_close(st["m"].delta, DELTA)
    torch.testing.assert_close(st["m"].row_score, DELTA.sum(0))
    torch.testing.assert_close(st["m"].col_score, DELTA.sum(1))
    assert st["m"].frames == 2 and st["m"].calls == 2
    torch.testing.assert_close(st["m"].input_norm, X.norm(dim=0))
    # frame with y_0 = 0 exactly: |w x| / eps
    x0 = torch.tensor([[2.0, -1.0]], dtype=torch.float64)  # y = [0, 7]
    d = mac_delta(W, x0, eps=1e-3)
    torch.testing.assert_close(d[0], torch.tensor([2e3, 2e3], dtype=torch.float64))


def test_product_elements_sorted_split():
    pos, neg = product_elements(torch.tensor([[1.0, -2.0, 3.0, 0.5]]),
                                torch.tensor([[1.0, 1.0, 1.0, -4.0]]), 0)
    assert pos.tolist() == [[3.0, 1.0, 0.0, 0.0]]
    assert neg.tolist() == [[-2.0, -2.0, 0.0, 0.0]]


def test_calibrate_ignores_padding():
    model = tiny_bert()
    a = torch.tensor([[5, 6, 7, 8, 9]])
    b = torch.tensor([[11, 12, 13]])
    padded = {"input_ids": torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    cfg = PruneConfig(blocks=("fc2", "in_proj"))
    s_pad = calibrate(model, [padded], cfg)
    s_sep = calibrate(model, [{"input_ids": a}, {"input_ids": b}], cfg)
    for name in s_pad.layers:
        assert s_pad[name].frames == 8
        # float32 attention with and without a padding mask differs by ~1e-4 relative in
        # Σ|w·x/y| (near-zero y amplify it); a padding frame counted would be ~10 %
        torch.testing.assert_close(s_pad[name].row_score, s_sep[name].row_score, rtol=1e-3, atol=0)
        torch.testing.assert_close(s_pad[name].sq_sum, s_sep[name].sq_sum, rtol=1e-5, atol=0)
    assert set(s_pad.layers) == {FC2.format(i) for i in range(2)} | {
        f"encoder.layer.{i}.attention.self.{q}" for i in range(2) for q in ("query", "key", "value")}


def test_albert_shared_layer_accumulates_all_uses():
    torch.manual_seed(0)
    model = AlbertModel(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32,
                                     num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64)).eval()
    stats = calibrate(model, [{"input_ids": torch.tensor([[3, 4, 5, 6]])}], PruneConfig())
    (name,) = stats.layers
    assert name.endswith("albert_layers.0.ffn_output")
    assert stats[name].calls == 3 and stats[name].frames == 12


# ---------------------------------------------------------------- criteria
def test_unit_scores_each_criterion_on_constructed_weights():
    w = torch.full((4, 6), 0.5)
    w[:, 1] = 0.01                      # tiny row (input 1)
    w[0, 4] = 3.0                       # input 4: one big weight, the rest zero
    w[1:, 4] = 0.0
    cfg = PruneConfig(criterion="l2", structure="rows", ratio=1 / 6)
    l2 = unit_scores(w, cfg)
    assert torch.argsort(l2)[:1].tolist() == [1]
    l1 = unit_scores(w, PruneConfig(criterion="l1", structure="rows", ratio=1 / 6))
    torch.testing.assert_close(l1.float(), w.abs().sum(0))
    cols = unit_scores(w, PruneConfig(criterion="l2", structure="columns", ratio=0.25))
    torch.testing.assert_close(cols.float(), w.norm(dim=1))
    mag = unit_scores(w, PruneConfig(criterion="magnitude", structure="irregular", ratio=0.5))
    torch.testing.assert_close(mag.float(), w.abs())
    blocks = unit_scores(w, PruneConfig(criterion="l1", structure="blocks", ratio=0.5,
                                        block_shape=(4, 2)))   # 4 inputs × 2 outputs
    assert blocks.shape == (2, 2)
    torch.testing.assert_close(blocks.float(), torch.tensor(
        [[w[:2, :4].abs().sum(), w[:2, 4:].abs().sum()],
         [w[2:, :4].abs().sum(), w[2:, 4:].abs().sum()]]))
    # activation-aware: input 4 has a big weight but a silent input -> lowest
    norm = torch.ones(6, dtype=torch.float64)
    norm[4] = 1e-3
    st = LayerStats(torch.zeros(6), torch.zeros(4), norm ** 2)
    act = unit_scores(w, PruneConfig(criterion="activation", structure="rows", ratio=0.2), st)
    assert int(torch.argmin(act)) == 4
    with pytest.raises(ValueError, match="calibration"):
        unit_scores(w, PruneConfig(criterion="mac"))
    # structured magnitude = sum of |w| over the unit
    mrows = unit_scores(w, PruneConfig(criterion="magnitude", structure="rows", ratio=0.2))
    torch.testing.assert_close(mrows, l1)


def test_random_criterion_is_seeded_uniform_and_removes_the_ratio():
    w = torch.randn(64, 300)
    cfg = PruneConfig(criterion="random", structure="rows", ratio=1 / 3, seed=5)
    a, b = unit_scores(w, cfg), unit_scores(w * 100, cfg)
    assert a.shape == (300,) and torch.equal(a, b)          # independent of the weights
    assert not torch.equal(a, unit_scores(w, PruneConfig(criterion="random", seed=6)))
    assert 0.4 < float(a.mean()) < 0.6 and float(a.min()) >= 0 and float(a.max()) < 1
    blocks = unit_scores(w, PruneConfig(criterion="random", structure="blocks", ratio=0.5,
                                        block_shape=(128, 32)))
    assert blocks.shape == (2, 3)
    # on a model: exactly round(ratio * rows) rows of every FC2 removed, reproducibly
    m1, m2 = tiny_bert(), tiny_bert()
    c = PruneConfig(criterion="random", structure="rows", ratio=0.25, seed=3)
    k1, k2 = compute_masks(m1, c), compute_masks(m2, c)
    for n, m in k1.weight.items():
        assert torch.equal(m, k2.weight[n])
        if n.endswith("output.dense") and "attention" not in n:
            assert int((~m.any(0)).sum()) == round(0.25 * m.shape[1])


def _set_fc2(model, layer, w):
    with torch.no_grad():
        model.encoder.layer[layer].output.dense.weight.copy_(w)


def test_l2_rows_pick_rows_and_couple_fc1_bert():
    model = tiny_bert()
    torch.manual_seed(1)
    w = torch.randn(32, 64) + 3.0
    low = [3, 10, 20, 40, 50, 63, 0, 7]
    w[:, low] = 0.01 * torch.arange(1, 9).float()
    _set_fc2(model, 0, w)
    masks = compute_masks(model, PruneConfig(criterion="l2", structure="rows", ratio=8 / 64))
    m2 = masks.weight[FC2.format(0)]
    assert sorted(masks.removed_rows(FC2.format(0)).tolist()) == sorted(low)
    assert (~m2).sum() == 8 * 32
    m1 = masks.weight[FC1.format(0)]
    assert sorted(masks.removed_columns(FC1.format(0)).tolist()) == sorted(low)
    assert sorted((~masks.bias[FC1.format(0)]).nonzero().flatten().tolist()) == sorted(low)
    assert m1.shape == (64, 32)
    # layer 1 pruned independently (scope="layer"): 8 rows too
    assert len(masks.removed_rows(FC2.format(1))) == 8


def test_mac_rows_global_ranking_across_layers():
    model = tiny_bert()
    stats = MacStats()
    for i in range(2):
        rs = torch.arange(64, dtype=torch.float64) + (0.0 if i == 0 else 1000.0)
        stats.layers[FC2.format(i)] = LayerStats(rs, torch.zeros(32), torch.zeros(64))
    g = compute_masks(model, PruneConfig(ratio=0.25, scope="global"), stats)
    assert g.removed_rows(FC2.format(0)).tolist() == list(range(32))
    assert len(g.removed_rows(FC2.format(1))) == 0
    l = compute_masks(model, PruneConfig(ratio=0.25, scope="layer"), stats)
    assert l.removed_rows(FC2.format(1)).tolist() == list(range(16))


def test_mac_rows_from_real_calibration_prune_least_contributing():
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 5] *= 1e-4  # row 5 contributes ~nothing
    batches = [{"input_ids": torch.randint(1, 100, (2, 8))} for _ in range(2)]
    stats = calibrate(model, batches, PruneConfig())
    masks = compute_masks(model, PruneConfig(ratio=1 / 64), stats)
    assert masks.removed_rows(FC2.format(0)).tolist() == [5]


def test_per_block_ratios_and_blocks_structure_and_columns():
    model = tiny_bert()
    cfg = PruneConfig(criterion="l1", structure="blocks", block_shape=(16, 16), ratio=0.25,
                      blocks=("in_proj", "fc1"), block_ratios={"fc1": 0.5})
    masks = compute_masks(model, cfg)
    q = masks.weight["encoder.layer.0.attention.self.query"]   # 32x32 -> 4 blocks, 1 pruned
    assert int((~q).sum()) == 16 * 16
    f1 = masks.weight[FC1.format(1)]                            # 64x32 -> 8 blocks, 4 pruned
    assert int((~f1).sum()) == 4 * 16 * 16
    cols = compute_masks(model, PruneConfig(criterion="l2", structure="columns", ratio=0.25,
                                            blocks=("out_proj",)))
    o = cols.weight["encoder.layer.0.attention.output.dense"]
    assert len(cols.removed_columns("encoder.layer.0.attention.output.dense")) == 8
    assert int((~o).sum()) == 8 * 32


def test_llama_gate_and_up_follow_down_rows_and_gpt2_conv1d():
    torch.manual_seed(0)
    llama = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2)).eval()
    m = compute_masks(llama, PruneConfig(criterion="l2", ratio=0.25))
    dead = m.removed_rows("layers.0.mlp.down_proj").tolist()
    assert len(dead) == 16
    for n in ("gate_proj", "up_proj"):
        assert m.removed_columns(f"layers.0.mlp.{n}").tolist() == dead
    torch.manual_seed(0)
    gpt = GPT2Model(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32)).eval()
    w = gpt.h[0].mlp.c_proj.weight   # Conv1D (in=128, out=32)
    with torch.no_grad():
        w[7] *= 1e-3
    g = compute_masks(gpt, PruneConfig(criterion="l2", ratio=1 / 128))
    assert g.removed_rows("h.0.mlp.c_proj").tolist() == [7]
    g.apply(gpt)
    assert torch.all(gpt.h[0].mlp.c_proj.weight[7] == 0)
    assert torch.all(gpt.h[0].mlp.c_fc.weight[:, 7] == 0) and gpt.h[0].mlp.c_fc.bias[7] == 0
    assert linear_weight(gpt.h[0].mlp.c_fc).shape == (128, 32)


# ---------------------------------------------------------------- masks in training
@pytest.mark.parametrize("mode", ["after_step", "attach"])
def test_masks_survive_adamw_steps(mode):
    model = tiny_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(1, 100, (4, 8))

    def step():
        opt.zero_grad()
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()

    for _ in range(3):  # dense steps: AdamW now holds non-zero moments everywhere
        step()
    masks = prune(model, PruneConfig(criterion="l2", ratio=0.25, blocks=("fc2", "in_proj")))
    before = {n: linear_weight(m).detach().clone() for n, m in model.named_modules()
              if n in masks.weight}
    if mode == "attach":
        handle = masks.attach(opt, model)
    else:
        masks.register_gradient_hooks(model)
    for _ in range(4):
        step()
        if mode == "after_step":
            masks.after_step(model)
    mods = dict(model.named_modules())
    for n, m in masks.weight.items():
        w = linear_weight(mods[n]).detach()
        assert torch.all(w[~m] == 0), n
        assert not torch.equal(w[m], before[n][m]), n   # kept weights still train
        if n in masks.bias:
            assert torch.all(mods[n].bias[~masks.bias[n]] == 0)
    # gradients of pruned weights are exactly zero
    opt.zero_grad()
    model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
    g = model.encoder.layer[0].output.dense.weight.grad
    assert torch.all(g[~masks.weight[FC2.format(0)]] == 0)
    assert g[masks.weight[FC2.format(0)]].abs().sum() > 0
    masks.remove_hooks()
    if mode == "attach":
        handle.remove()


def test_masks_save_load_roundtrip(tmp_path):
    model = tiny_bert()
    masks = compute_masks(model, PruneConfig(criterion="l1", ratio=0.5))
    masks.save(tmp_path / "m.pt")
    back = PruningMasks.load(tmp_path / "m.pt")
    assert set(back.weight) == set(masks.weight)
    assert all(torch.equal(back.weight[n], masks.weight[n]) for n in masks.weight)
    assert back.sparsity() == pytest.approx(masks.sparsity())
    # FC2 half rows + the coupled FC1 half columns -> exactly half of each masked matrix
    assert back.sparsity() == pytest.approx(0.5)


# ---------------------------------------------------------------- config validation
@pytest.mark.parametrize("kw,field", [
    ({"criterion": "lottery"}, "criterion"), ({"structure": "diagonal"}, "structure"),
    ({"criterion": "random", "seed": 1.5}, "seed"),
    ({"criterion": "mac", "structure": "irregular"}, "structure"),
    ({"ratio": 1.0}, "ratio"), ({"blocks": ("attn",)}, "blocks"),
    ({"block_ratios": {"fc1": 0.2}}, "block_ratios"),
    ({"criterion": "l2", "structure": "blocks"}, "block_shape"),
    ({"scope": "model"}, "scope"), ({"admm_rho": 0.0}, "admm_rho"),
    ({"admm_interval_steps": 0}, "admm_interval_steps")])
def test_prune_config_validation_names_field(kw, field):
    with pytest.raises(ValueError, match=f"PruneConfig.{field}"):
        PruneConfig(**kw)


def test_no_matching_module_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear"):
        compute_masks(nn.Sequential(nn.Linear(4, 4)), PruneConfig(criterion="l2"))


# ---------------------------------------------------------------- plots
def test_fig31_fig32_pngs(tmp_path):
    model = tiny_bert()
    batches = [{"input_ids": torch.randint(1, 100, (2, 8)),
                "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}]
    frames = capture_frames(model, batches, FC2.format(0))
    assert frames.shape == (13, 64)
    w = model.encoder.layer[0].output.dense.weight
    p1 = plot_product_curves(w, frames, 3, str(tmp_path / "f31.png"), figsize=(10, 4), dpi=50)
    assert png_size(p1) == (500, 200)
    stats = calibrate(model, batches, [FC2.format(0)], keep_delta=[FC2.format(0)])
    d = stats[FC2.format(0)].delta
    assert d.shape == (32, 64)
    torch.testing.assert_close(d.sum(0), stats[FC2.format(0)].row_score)
    p2 = plot_delta_heatmap(d, str(tmp_path / "f32.png"), figsize=(8, 6), dpi=50)
    assert png_size(p2) == (400, 300)
    assert (tmp_path / "f32.png").stat().st_size > 5000


# ---------------------------------------------------------------- gradual pruning
def test_previous_masks_stay_removed_even_when_new_scores_disagree():
    model = tiny_bert()
    first = compute_masks(model, PruneConfig(criterion="random", ratio=0.25, seed=1))
    plain = compute_masks(model, PruneConfig(criterion="random", ratio=0.5, seed=2))
    nested = compute_masks(model, PruneConfig(criterion="random", ratio=0.5, seed=2), previous=first)
    name = FC2.format(0)
    old = set(first.removed_rows(name).tolist())
    assert not old <= set(plain.removed_rows(name).tolist())  # other seed: other rows
    new = set(nested.removed_rows(name).tolist())
    assert old <= new and len(new) == 32
    # the rest are the lowest-scoring of the new criterion among the rows still alive
    scores = unit_scores(linear_weight(model.encoder.layer[0].output.dense).detach(),
                         PruneConfig(criterion="random", ratio=0.5, seed=2),
                         generator=torch.Generator().manual_seed(2))
    alive = [j for j in range(64) if j not in old]
    assert new - old == set(sorted(alive, key=lambda j: float(scores[j]))[:32 - len(old)])
    # coupled FC1 columns follow
    assert set(nested.removed_columns(FC1.format(0)).tolist()) == new


@pytest.mark.parametrize("criterion", ["mac", "l2"])
def test_gradual_pruner_stages_are_nested_and_end_at_the_one_shot_count(criterion):
    from analogformer.pruning import GradualPruner

    model = tiny_bert()
    batches = [{"input_ids": torch.randint(1, 100, (2, 8))} for _ in range(2)]
    cfg = PruneConfig(criterion=criterion, ratio=0.5)
    calls = []

    def stats_fn(m):
        calls.append(1)
        return calibrate(m, batches, cfg) if cfg.needs_calibration else None

    pruner = GradualPruner(model, cfg, stages=4, total_steps=8, stats_fn=stats_fn)
    assert pruner.schedule == [0, 2, 4, 6] and not pruner.final and len(calls) == 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(1, 100, (4, 8))
    seen = []
    for _ in range(8):
        opt.zero_grad()
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()
        pruner.after_step(model)
        removed = set(pruner.masks.removed_rows(FC2.format(1)).tolist())
        seen.append(removed)
        w = linear_weight(model.encoder.layer[1].output.dense).detach()
        assert torch.all(w[:, sorted(removed)] == 0)
    counts = [len(s) for s in seen]
    assert counts == [8, 16, 16, 24, 24, 32, 32, 32]  # 64 rows: 1/8, 2/8, 3/8, 4/8 after steps 2, 4, 6
    assert all(a <= b for a, b in zip(seen, seen[1:]))   # nested
    assert pruner.final and pruner.ratio == 0.5 and len(calls) == 4
    pruner.remove_hooks()


def test_gradual_pruner_errors():
    from analogformer.pruning import GradualPruner

    with pytest.raises(ValueError, match="stages"):
        GradualPruner(tiny_bert(), PruneConfig(criterion="l1"), stages=0, total_steps=4)
    with pytest.raises(ValueError, match="ADMM"):
        GradualPruner(tiny_bert(), PruneConfig(criterion="l1", admm_rho=1e-3), stages=2, total_steps=4)
