"""Attention MAC energy / area by precision and per-model MAC counts."""
import pytest
import torch
from transformers import (AlbertConfig, BertConfig, BertModel, DistilBertConfig, GPT2Config,
                          LlamaConfig, LlamaForCausalLM)

from analogformer.hardware.energy import (MacCost, attention_energy_table, attention_macs,
                                 linear_macs, mac_cost, model_dims, render_markdown)


def test_int6_anchor_exact():
    c = mac_cost("int6")
    assert c.energy == 1 / 11.3
    assert c.area == 1 / 4.7
    assert mac_cost(6) == c
    assert mac_cost("bf16") == MacCost(1.0, 1.0)
    assert 1 - c.energy == pytest.approx(0.9115, abs=1e-4)  # seed 001: "91 % reduction"


def test_integer_scaling_bits_squared():
    assert mac_cost("int8").energy == pytest.approx((8 / 6) ** 2 / 11.3, rel=1e-12)
    assert mac_cost("int10").area == pytest.approx((10 / 6) ** 2 / 4.7, rel=1e-12)
    e = [mac_cost(f"int{b}").energy for b in (6, 8, 10)]
    assert e[0] < e[1] < e[2] < 1.0


def test_fp32_model():
    d = (8 / 6) ** 2 / 11.3
    a = (8 / 6) ** 2 / 4.7
    c = mac_cost("fp32")
    assert c.energy == pytest.approx(9 * d + 3 * (1 - d), rel=1e-12)
    assert c.area == pytest.approx(9 * a + 3 * (1 - a), rel=1e-12)


@pytest.mark.parametrize("bad", ["fp8", "int", "int1", 1, 2.5, True])
def test_bad_precision(bad):
    with pytest.raises(ValueError, match="precision|bits"):
        mac_cost(bad)


def test_hand_computed_counts_bert():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64)
    d = model_dims(cfg)
    assert attention_macs(d, 8) == 2 * 2 * 8 * 8 * 32  # 2 · L · S² · H = 8192
    assert linear_macs(d, 8) == 2 * 8 * (4 * 32 * 32 + 2 * 32 * 64)  # 98304


def test_linear_count_matches_built_model_weights():
    """Per token, linear MACs = weights of the layer matrices (cross-check by walking)."""
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, vocab_size=50)
    with torch.device("meta"):
        model = BertModel(cfg)
    n = sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    assert linear_macs(model_dims(cfg), 1) == n
    lcfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, intermediate_size=48, vocab_size=50)
    with torch.device("meta"):
        lm = LlamaForCausalLM(lcfg)
    n = sum(m.weight.numel() for m in lm.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert linear_macs(model_dims(lcfg), 1) == n


def test_gqa_counts_llama():
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, intermediate_size=48)
    d = model_dims(cfg)
    assert (d.heads, d.kv_heads, d.head_dim, d.ffn_matrices) == (4, 2, 16, 3)
    assert attention_macs(d, 8) == 2 * 2 * 64 * 4 * 16
    per_token = 32 * 64 + 2 * 32 * 32 + 64 * 32 + 3 * 32 * 48
    assert linear_macs(d, 8) == 2 * 8 * per_token


def test_other_families_dims():
    assert model_dims(GPT2Config(n_embd=32, n_layer=3, n_head=2)).intermediate == 128
    dd = model_dims(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64))
    assert (dd.layers, dd.hidden, dd.intermediate) == (2, 32, 64)
    assert model_dims(AlbertConfig(hidden_size=32, num_attention_heads=2,
                                   intermediate_size=64)).layers == 12
    with pytest.raises(ValueError, match="unsupported model_type"):
        model_dims(object())


def test_table_s_squared_scaling_and_shares():
    rows = attention_energy_table(BertConfig(), seq_lens=(128, 512))
    assert len(rows) == 10
    by = {(r["seq_len"], r["precision"]): r for r in rows}
    a128, a512 = by[(128, "bf16")], by[(512, "bf16")]
    assert a512["attention_macs"] == 16 * a128["attention_macs"]
    assert a512["linear_macs"] == 4 * a128["linear_macs"]
    # BERT-base, S=128: 2·12·128²·768 attention MACs vs 12·128·(4·768² + 2·768·3072)
    assert a128["attention_macs"] == 301_989_888
    assert a128["linear_macs"] == 10_871_635_968
    assert a128["attention_share"] == pytest.approx(301_989_888 / 11_173_625_856)
    assert a512["attention_share"] == pytest.approx(0.10, abs=1e-12)
    i6 = by[(128, "int6")]
    assert i6["attention_energy"] == pytest.approx(a128["attention_macs"] / 11.3, rel=1e-12)
    assert i6["energy_reduction_vs_bf16"] == pytest.approx(11.3, rel=1e-12)
    md = render_markdown(rows)
    assert md.count("\n") == 12 and "| bert | 512 | int6 |" in md and "11.30" in md
