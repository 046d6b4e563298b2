"""Compaction (physical removal of FFN units), save/reload, and ADMM pruning."""
import pytest
import torch
from transformers import (AlbertConfig, AlbertModel, AutoModel, BertConfig,
                          BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaModel)

from analogformer.pruning import (ADMMPruner, PruneConfig, calibrate, compact, linear_weight,
                                  load_compacted, prune)
from analogformer.pruning.compact import SIZES_KEY


def bert_cls(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3)).eval()


IDS = {"input_ids": torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0)),
       "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}


def test_compact_bert_exact_and_save_reload(tmp_path):
    model = bert_cls()
    stats = calibrate(model, [IDS], PruneConfig())
    masks = prune(model, PruneConfig(ratio=0.25), stats)
    ref = model(**IDS).logits
    res = compact(model, masks)
    assert res.ffn_sizes == {f"bert.encoder.layer.{i}.output.dense": 48 for i in range(2)}
    assert res.uniform and model.config.intermediate_size == 48
    assert model.bert.encoder.layer[0].intermediate.dense.weight.shape == (48, 32)
    assert model.bert.encoder.layer[0].intermediate.dense.bias.shape == (48,)
    assert model.bert.encoder.layer[0].output.dense.weight.shape == (32, 48)
    assert res.removed_parameters == 2 * 16 * (32 + 1 + 32)
    torch.testing.assert_close(model(**IDS).logits, ref, rtol=0, atol=1e-6)
    # masks restricted to kept units: FC2/FC1 masks are all-True after compaction
    assert all(bool(m.all()) for m in res.masks.weight.values())
    res.masks.apply(model)  # shapes match the compacted model
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    assert back.config.intermediate_size == 48
    torch.testing.assert_close(back(**IDS).logits, ref, rtol=0, atol=1e-6)


def test_compact_non_uniform_sizes_need_load_compacted(tmp_path):
    model = bert_cls()
    with torch.no_grad():   # layer-0 rows are much less important -> global ranking hits it
        model.bert.encoder.layer[0].output.dense.weight[:, :40] *= 1e-3
    masks = prune(model, PruneConfig(criterion="l2", ratio=0.25, scope="global"))
    ref = model(**IDS).logits
    res = compact(model, masks)
    sizes = sorted(res.ffn_sizes.values())
    assert sum(sizes) == 128 - 32 and not res.uniform
    assert getattr(model.config, SIZES_KEY) == res.ffn_sizes
    torch.testing.assert_close(model(**IDS).logits, ref, rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception):
        type(model).from_pretrained(tmp_path)   # HF assumes one intermediate size
    back = load_compacted(str(tmp_path))
    torch.testing.assert_close(back(**IDS).logits, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "albert"])
def test_compact_other_architectures_exact(arch, tmp_path):
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2,
                                           n_positions=32)).eval()
        fc2, size_attr, full = "transformer.h.1.mlp.c_proj", "n_inner", 128
    elif arch == "llama":
        model = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=2)).eval()
        fc2, size_attr, full = "layers.1.mlp.down_proj", "intermediate_size", 64
    else:
        model = AlbertModel(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32,
                                         num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=64)).eval()
        fc2 = "encoder.albert_layer_groups.0.albert_layers.0.ffn_output"
        size_attr, full = "intermediate_size", 64
    ids = {"input_ids": IDS["input_ids"]}
    masks = prune(model, PruneConfig(ratio=0.25), calibrate(model, [ids], PruneConfig()))
    out = model(**ids)
    ref = out.logits if arch == "gpt2" else out.last_hidden_state
    res = compact(model, masks)
    assert res.ffn_sizes[fc2] == full - full // 4
    assert getattr(model.config, size_attr) == full - full // 4
    mods = dict(model.named_modules())
    assert linear_weight(mods[fc2]).shape[1] == full - full // 4
    out = model(**ids)
    torch.testing.assert_close(out.logits if arch == "gpt2" else out.last_hidden_state, ref,
                               rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path)
    back = (GPT2LMHeadModel if arch == "gpt2" else AutoModel).from_pretrained(tmp_path).eval()
    out = back(**ids)
    torch.testing.assert_close(out.logits if arch == "gpt2" else out.last_hidden_state, ref,
                               rtol=0, atol=1e-6)


def test_admm_drives_weights_to_sparse_set_and_hard_prunes():
    cfg = PruneConfig(criterion="l2", structure="rows", ratio=0.5, admm_rho=5.0,
                      admm_interval_steps=5)
    x = torch.randint(1, 100, (4, 8), generator=torch.Generator().manual_seed(1))

    def run(use_admm):
        model = bert_cls(seed=3).train()
        teacher = bert_cls(seed=4)
        with torch.no_grad():
            target = teacher.bert(input_ids=x).last_hidden_state
        # SGD with lr·ρ = 0.5 < 2 keeps the quadratic penalty stable
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        admm = ADMMPruner(model, cfg)
        d0 = admm.distance_to_sparse_set(model)
        for _ in range(40):
            opt.zero_grad()
            loss = (model.bert(input_ids=x).last_hidden_state - target).pow(2).mean()
            if use_admm:
                loss = loss + admm.penalty(model)
            loss.backward()
            opt.step()
            if use_admm:
                admm.step(model)
        return model, admm, d0, admm.distance_to_sparse_set(model)

    _, _, d0, d_plain = run(False)
    model, admm, d0b, d_admm = run(True)
    assert d0 == pytest.approx(d0b)
    assert d_plain > 0.9 * d0            # plain training does not approach the sparse set
    assert d_admm < 0.05 * d0            # ADMM does
    assert admm.primal_residual(model) < 0.05
    masks = admm.finalize(model)
    name = "bert.encoder.layer.0.output.dense"
    assert len(masks.removed_rows(name)) == 32
    assert torch.all(linear_weight(dict(model.named_modules())[name])[~masks.weight[name]] == 0)
    fc1 = "bert.encoder.layer.0.intermediate.dense"
    assert masks.removed_columns(fc1).tolist() == masks.removed_rows(name).tolist()


def test_admm_requires_rho():
    with pytest.raises(ValueError, match="admm_rho"):
        ADMMPruner(bert_cls(), PruneConfig(criterion="l2"))
