"""Tile mapping: hand-checked shapes, seed 000's ALBERT numbers, pruning comparison, PNG."""
import csv
import struct

import pytest
import torch
from transformers import (AlbertConfig, BertConfig, BertForSequenceClassification,
                          GPT2Config, LlamaConfig)

from analogformer.config import TileConfig
from analogformer.hardware.mapping import (ARES, BlockPlan, MappingConfig, MatrixShape, compare,
                                           comparison_csv, comparison_markdown, map_matrices,
                                           map_model, matrix_shapes, shrink)
from analogformer.report.figures import plot_tile_layout
from analogformer.pruning import PruneConfig, compact, prune

ALBERT_BASE = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                   embedding_size=128, num_hidden_layers=12)


def one(rows, cols, block="fc1", cfg=None):
    return map_matrices([MatrixShape("m", block, rows, cols)], cfg or MappingConfig())


def test_hand_checked_shapes_and_policies():
    fc1 = one(768, 3072)   # rows = inputs 768, columns = outputs 3072
    assert fc1.tiles == 12
    assert fc1.placements[0].row_sizes == [384, 384]
    assert fc1.placements[0].col_sizes == [512] * 6
    fc2 = one(3072, 768, "fc2")
    assert fc2.tiles == 12 and fc2.placements[0].row_sizes == [512] * 6
    assert fc2.placements[0].col_sizes == [384, 384]
    ff = one(768, 3072, cfg=MappingConfig(row_policy="fill_first", col_policy="fill_first"))
    assert ff.tiles == 12 and ff.placements[0].row_sizes == [512, 256]
    assert fc1.occupancy == pytest.approx(768 * 3072 / (12 * 512 * 512))
    small = one(100, 30)
    assert small.tiles == 1 and small.occupancy == pytest.approx(3000 / 512 ** 2)
    odd = one(1025, 513)
    assert odd.tiles == 3 * 2 and odd.placements[0].row_sizes == [342, 342, 341]
    tc = MappingConfig.from_tile_config(TileConfig(rows=256, cols=128, split_policy="fill_first"))
    t = one(768, 3072, cfg=tc)
    assert t.tiles == 3 * 24 and t.placements[0].col_sizes[-1] == 128
    plan = MappingConfig(block_plans={"out_proj": BlockPlan(max_cols=256)})
    assert one(768, 768, "out_proj", plan).tiles == 2 * 3
    assert one(768, 768, "fc1", plan).tiles == 2 * 2


def test_albert_base_from_config_matches_seed000():
    cfg = MappingConfig.seed000_albert()
    shapes = matrix_shapes(AlbertConfig(**ALBERT_BASE), cfg)
    assert [(m.block, m.rows, m.cols) for m in shapes] == [
        ("in_proj", 768, 2304), ("out_proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768)]
    tm = map_matrices(shapes, cfg)
    # seed 000 ch. 2 §5: in-proj 10 tiles (384 rows; 4×512 + 256 cols), out-proj 6 half
    # tiles (384×256), FC1 12 (384×512), FC2 6 full + 6 half (512×512 / 512×256)
    assert {b: d["tiles"] for b, d in tm.per_block().items()} == {
        "in_proj": 10, "out_proj": 6, "fc1": 12, "fc2": 12}
    assert tm.per_block()["in_proj"]["weights"] == 1_769_472
    assert tm.weights == 7_077_888            # "~7.1 M weights"
    assert tm.tiles == 40
    # half tiles shared side by side: 26 full + 14 halves -> 33 of 34 tiles, i.e. "only
    # two half tiles free"; one ARES chip (8.9 M weights) holds all 12 shared layers
    assert tm.tiles_used == 33 and tm.chips_needed == 1
    assert ARES.capacity == 8_912_896 and tm.weights_per_chip() == [7_077_888]
    # ALBERT's layer is shared: 1 layer or 12 layers map identically
    one_layer = map_model(AlbertConfig(**{**ALBERT_BASE, "num_hidden_layers": 1}), cfg)
    assert one_layer.tiles == 40 and one_layer.weights == tm.weights


@pytest.mark.parametrize("block,removed,freed,weights,pct", [
    ("in_proj", 256, 5, 589_824, 8.33), ("out_proj", 256, 3, 196_608, 2.78),
    ("fc1", 256, 6, 786_432, 11.11), ("fc2", 512, 4, 786_432, 11.11)])
def test_seed000_table_3_1(block, removed, freed, weights, pct):
    """Table 3.1 counts one tile per piece (no sharing), FC2 rows coupled to FC1 columns.
    (The seed prints 2 % for the out-projection; 196,608 / 7,077,888 is 2.78 %.)"""
    cfg = MappingConfig.seed000_albert()
    shapes = matrix_shapes(AlbertConfig(**ALBERT_BASE), cfg)
    before = map_matrices(shapes, cfg)
    after = map_matrices(shrink(shapes, {block: removed}), cfg)
    total = compare(before, after)[-1]
    assert (total["tiles_freed"], total["weights_removed"]) == (freed, weights)
    assert total["pct_weights_removed"] == pytest.approx(pct, abs=0.01)
    if block == "fc2":
        per = {r["block"]: r["tiles_freed"] for r in compare(before, after)}
        assert per["fc2"] == 2 and per["fc1"] == 2     # "2 tiles from FC2 ... 2 from FC1"


def test_bert_base_counts_every_layer_and_excludes_heads():
    cfg = BertConfig(num_hidden_layers=12)
    model_cfg = MappingConfig()
    shapes = matrix_shapes(cfg, model_cfg)
    assert len(shapes) == 12 * 6 and all(m.block != "other" for m in shapes)
    tm = map_matrices(shapes, model_cfg)
    # per layer: Q, K, V, out 2×2 each = 16, FC1 2×6 = 12, FC2 6×2 = 12
    assert tm.tiles == 12 * 40 and tm.chips_needed == 15
    fused = map_model(cfg, MappingConfig(fuse_qkv=True))
    assert fused.per_block()["in_proj"]["tiles"] == 12 * 10
    torch.manual_seed(0)
    clf = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64))
    names = [m.name for m in matrix_shapes(clf)]
    assert not any("classifier" in n or "pooler" in n for n in names) and len(names) == 6


def test_gpt2_conv1d_and_llama_orientation():
    g = {m.name: (m.rows, m.cols) for m in matrix_shapes(
        GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=50))}
    assert g["h.0.attn.c_attn"] == (64, 192) and g["h.0.mlp.c_proj"] == (256, 64)
    l = {m.name: (m.block, m.rows, m.cols) for m in matrix_shapes(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50))}
    assert l["layers.0.self_attn.k_proj"] == ("in_proj", 64, 32)
    assert l["layers.1.mlp.down_proj"] == ("fc2", 128, 64)
    assert l["layers.1.mlp.up_proj"] == ("fc1", 64, 128)


def test_pruned_model_before_after_live_only_equals_compacted(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64)).eval()
    cfg = MappingConfig(tile_rows=16, tile_cols=16)
    before = map_model(model, cfg)
    masks = prune(model, PruneConfig(criterion="l2", ratio=0.25, blocks=("fc2", "in_proj")))
    live = map_model(model, MappingConfig(tile_rows=16, tile_cols=16, live_only=True))
    rows = {r["block"]: r for r in compare(before, live)}
    # FC2 64 -> 48 rows: 4×2 -> 3×2 tiles; FC1 64 -> 48 cols: 2×4 -> 2×3; Q/K/V 32 -> 24 rows
    assert rows["fc2"]["tiles_freed"] == 2 * 2 and rows["fc1"]["tiles_freed"] == 2 * 2
    assert rows["in_proj"]["tiles_freed"] == 0          # 24 rows still need 2 row tiles
    assert rows["in_proj"]["weights_removed"] == 2 * 3 * 8 * 32
    assert rows["total"]["tiles_freed"] == 8
    compact(model, masks)
    after_compact = map_model(model, cfg)
    assert after_compact.per_block()["fc2"] == live.per_block()["fc2"]
    assert after_compact.per_block()["fc1"] == live.per_block()["fc1"]
    md = comparison_markdown(compare(before, live))
    assert md.splitlines()[0].startswith("| block | tiles_before") and "| total | 64 | 56 | 8 |" in md
    path = comparison_csv(compare(before, live), str(tmp_path / "cmp.csv"))
    with open(path) as f:
        got = list(csv.DictReader(f))
    assert got[-1]["block"] == "total" and got[-1]["tiles_freed"] == "8"
    table = before.to_markdown()
    assert "encoder.layer.0.output.dense" in table and "Total: 64 tiles" in table
    before.to_csv(str(tmp_path / "map.csv"))
    with open(tmp_path / "map.csv") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_live_only_needs_weights():
    with pytest.raises(ValueError, match="live_only"):
        matrix_shapes(BertConfig(num_hidden_layers=1), MappingConfig(live_only=True))


def test_tile_layout_png(tmp_path):
    cfg = MappingConfig.seed000_albert()
    shapes = matrix_shapes(AlbertConfig(**ALBERT_BASE), cfg)
    before = map_matrices(shapes, cfg)
    after = map_matrices(shrink(shapes, {"fc2": 512}), cfg)
    p = plot_tile_layout(before, str(tmp_path / "tiles.png"), after=after, figsize=(12, 6), dpi=80)
    with open(p, "rb") as f:
        head = f.read(24)
    assert struct.unpack(">II", head[16:24]) == (960, 480)
    assert (tmp_path / "tiles.png").stat().st_size > 10_000


@pytest.mark.parametrize("kw,field", [({"row_policy": "greedy"}, "row_policy"),
                                      ({"tile_rows": 0}, "tile_rows"),
                                      ({"block_plans": {"attn": BlockPlan()}}, "block_plans"),
                                      ({"block_plans": {"fc1": BlockPlan(max_cols=1024)}},
                                       "block_plans")])
def test_mapping_config_validation(kw, field):
    with pytest.raises(ValueError, match=f"MappingConfig.{field}"):
        MappingConfig(**kw)


def test_shrink_rejects_too_many_rows():
    with pytest.raises(ValueError, match="cannot remove"):
        shrink([MatrixShape("a.ffn_output", "fc2", 64, 32)], {"fc2": 65})
