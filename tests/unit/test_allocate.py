"""Tile-aligned global allocation (`PruneConfig.tile_multiple`, `pruning.allocate`)."""
import itertools
import logging

import pytest
import torch
from transformers import BertConfig, BertModel

from analogformer.pruning import PruneConfig, calibrate, compute_masks, kept_units, prune
from analogformer.pruning.allocate import aligned_options, tile_aligned_counts
from analogformer.pruning.obs import GreedyRows
from analogformer.study.prune_config import PruneStudyConfig

FC2 = "encoder.layer.{}.output.dense"


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64)).eval()


def batches(k=4):
    return [{"input_ids": torch.randint(1, 100, (4, 16), generator=torch.Generator().manual_seed(i)),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for i in range(k)]


def test_aligned_options_keep_whole_multiples_or_everything():
    assert aligned_options(1536, 512) == [0, 512, 1024]  # keep 1536, 1024, 512
    assert aligned_options(1000, 512) == [0, 488]         # keep 1000 (2 tiles) or 512
    assert aligned_options(1000, 512, least=300) == [488]
    assert aligned_options(400, 512) == [0]               # fits one tile: nothing to free
    assert aligned_options(3072, 512) == [0, 512, 1024, 1536, 2048, 2560]


def test_tile_aligned_counts_is_the_cheapest_combination_by_brute_force():
    g = torch.Generator().manual_seed(3)
    sizes, multiple = [48, 64, 40], 16
    # increasing prefix costs, as a criterion's cheapest-first removals give
    costs = [[0.0] + torch.cumsum(torch.rand(n, generator=g), 0).tolist() for n in sizes]
    for total in range(0, 97, 8):
        counts = tile_aligned_counts(costs, sizes, multiple, total)
        opts = [aligned_options(n, multiple) for n in sizes]
        combos = list(itertools.product(*opts))
        reach = min((sum(c) for c in combos), key=lambda s: (abs(s - total), -s))
        best = min(sum(costs[m][r] for m, r in enumerate(c)) for c in combos if sum(c) == reach)
        assert sum(counts) == reach
        assert all(r in o for r, o in zip(counts, opts))
        assert sum(costs[m][r] for m, r in enumerate(counts)) == pytest.approx(best)


def test_tile_aligned_counts_respects_earlier_stages_and_names_problems():
    costs = [[float(r) for r in range(65)], [0.5 * r for r in range(65)]]
    assert tile_aligned_counts(costs, [64, 64], 16, 32) == [0, 32]  # the cheaper matrix
    assert tile_aligned_counts(costs, [64, 64], 16, 32, least=[16, 0]) == [16, 16]
    assert tile_aligned_counts(costs, [64, 64], 16, 32, least=[20, 0]) == [32, 0]
    with pytest.raises(ValueError, match="earlier stage"):  # 50 gone: keeping 16 is too many
        tile_aligned_counts(costs, [64, 64], 16, 32, least=[50, 0])
    with pytest.raises(ValueError, match="smaller tile_multiple"):
        tile_aligned_counts(costs, [64, 64], 512, 32)
    with pytest.raises(ValueError, match="positive int"):
        tile_aligned_counts(costs, [64, 64], 0, 32)


def test_obs_global_tile_aligned_takes_the_cheapest_whole_multiples():
    """Layer 0's FC2 gets 24 nearly silent rows, layer 1's 8: unaligned global OBS at 1/4
    (32 of 128 rows) takes exactly those, 24 + 8 — no layer gives up a whole 16-row tile
    beyond them. Aligned to 16 the layers lose multiples of 16, each a prefix of its own
    greedy order, in the combination whose summed refit error (the greedy step errors,
    per calibration frame) is least."""
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 40:] *= 1e-4
        model.encoder.layer[1].output.dense.weight[:, :8] *= 1e-4
    cfg = PruneConfig(criterion="obs", ratio=0.25, scope="global", reconstruct=True, tile_multiple=16)
    stats = calibrate(model, batches(), cfg)
    free = compute_masks(model, PruneConfig(criterion="obs", ratio=0.25, scope="global",
                                            reconstruct=True), stats)
    assert sorted(free.removed_rows(FC2.format(0)).tolist()) == list(range(40, 64))
    assert sorted(free.removed_rows(FC2.format(1)).tolist()) == list(range(8))
    masks = compute_masks(model, cfg, stats)
    gone = [masks.removed_rows(FC2.format(k)) for k in range(2)]
    assert [len(g) % 16 for g in gone] == [0, 0] and sum(len(g) for g in gone) == 32
    assert not masks.weight["encoder.layer.0.intermediate.dense"][gone[0]].any()  # FC1 follows
    cum = []
    for k in range(2):
        st = stats[FC2.format(k)]
        g = GreedyRows(model.encoder.layer[k].output.dense.weight, st.gram,
                       cfg.reconstruct_damping, scale=1 / st.frames)
        errs = [0.0] + [g.remove() for _ in range(32)]
        cum.append(torch.tensor(errs).cumsum(0))
        assert set(gone[k].tolist()) == set(g.order[:len(gone[k])])  # a prefix of its order
    options = {r0: float(cum[0][r0] + cum[1][32 - r0]) for r0 in (0, 16, 32)}
    assert options[len(gone[0])] == pytest.approx(min(options.values()))


def test_obs_tile_aligned_nested_stages_stay_whole_multiples():
    model = tiny_bert(1)
    first = PruneConfig(criterion="obs", ratio=0.125, scope="global", tile_multiple=16)
    m1 = prune(model, first, calibrate(model, batches(3), first))
    second = PruneConfig(criterion="obs", ratio=0.375, scope="global", tile_multiple=16)
    m2 = prune(model, second, calibrate(model, batches(3), second), previous=m1)
    n1 = [len(m1.removed_rows(FC2.format(k))) for k in range(2)]
    n2 = [len(m2.removed_rows(FC2.format(k))) for k in range(2)]
    assert sum(n1) == 16 and sum(n2) == 48
    assert all(n % 16 == 0 for n in n1 + n2)
    for k in range(2):
        assert set(m1.removed_rows(FC2.format(k)).tolist()) <= set(m2.removed_rows(FC2.format(k)).tolist())


def test_magnitude_rows_tile_aligned_removes_each_matrix_lowest_rows():
    model = tiny_bert(2)
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[:, :20] *= 0.01
    cfg = PruneConfig(criterion="l1", ratio=0.25, scope="global", tile_multiple=16)
    masks = compute_masks(model, cfg)
    gone = [masks.removed_rows(FC2.format(k)) for k in range(2)]
    assert [len(g) for g in gone] == [0, 32]
    assert kept_units(model, cfg, masks) == {"fc2": [64, 32]}
    w = model.encoder.layer[1].output.dense.weight.detach().abs().sum(0)
    assert set(gone[1].tolist()) == set(torch.argsort(w, stable=True)[:32].tolist())


def test_tile_aligned_total_rounds_to_whole_multiples_with_a_warning(caplog):
    model = tiny_bert(2)
    cfg = PruneConfig(criterion="l1", ratio=0.2, scope="global", tile_multiple=16)  # 25.6 -> 26
    with caplog.at_level(logging.WARNING):
        masks = compute_masks(model, cfg)
    assert sum(len(masks.removed_rows(FC2.format(k))) for k in range(2)) == 32
    assert "removes 32 units instead of 26" in caplog.text


@pytest.mark.parametrize("fields,msg", [
    ({"tile_multiple": 512}, "scope"),                                   # scope layer
    ({"tile_multiple": 0, "scope": "global"}, "positive int"),
    ({"tile_multiple": True, "scope": "global"}, "positive int"),
    ({"tile_multiple": 16, "scope": "global", "criterion": "magnitude",
      "structure": "irregular"}, "structure"),
])
def test_tile_multiple_config_errors(fields, msg):
    with pytest.raises(ValueError, match=f"tile_multiple.*{msg}|{msg}"):
        PruneConfig(**fields)


def test_study_label_names_the_alignment():
    pc = PruneConfig(criterion="obs", scope="global", tile_multiple=512, reconstruct=True)
    assert PruneStudyConfig().label(pc) == "obs-rows-global-t512-ls"
