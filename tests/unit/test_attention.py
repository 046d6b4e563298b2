"""INT-N quantized attention matmuls on tiny BERT / ALBERT / DistilBERT / GPT-2 / LLaMA."""
import pytest
import torch
from torch import nn
from transformers import (AlbertConfig, AlbertModel, BertConfig, BertModel, DistilBertConfig,
                          DistilBertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM)

from analogformer.nn.attention import (ATTN_IMPLEMENTATION, AttentionQuantConfig,
                                       OperandQuantizer, attention_modules,
                                       attention_quantizers, attention_scales,
                                       calibrate_attention, dequantize_attention,
                                       fake_quantize, quantize_attention)

VOCAB = 100
FAMILIES = ["bert", "albert", "distilbert", "gpt2", "llama"]


def build(family, attn_dropout=0.0):
    torch.manual_seed(0)
    if family == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=32,
                         attention_probs_dropout_prob=attn_dropout, hidden_dropout_prob=0.0)
        m = BertModel(cfg)
    elif family == "albert":
        cfg = AlbertConfig(hidden_size=32, embedding_size=16, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
                           max_position_embeddings=32, attention_probs_dropout_prob=attn_dropout,
                           hidden_dropout_prob=0.0)
        m = AlbertModel(cfg)
    elif family == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=VOCAB,
                               max_position_embeddings=32, attention_dropout=attn_dropout,
                               dropout=0.0)
        m = DistilBertModel(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32,
                         bos_token_id=0, eos_token_id=0, attn_pdrop=attn_dropout,
                         resid_pdrop=0.0, embd_pdrop=0.0)
        m = GPT2LMHeadModel(cfg)
    elif family == "llama":  # GQA: 4 query heads share 2 key/value heads
        cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB,
                          max_position_embeddings=32, attention_dropout=attn_dropout,
                          bos_token_id=0, eos_token_id=0)
        m = LlamaForCausalLM(cfg)
    return m.eval()


def batch(seed=1, seq=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, seq - 4:] = 0  # padding exercises the additive mask
    return dict(input_ids=ids, attention_mask=mask)


def run(model, b):
    with torch.no_grad():
        return model(**b)[0]


def eager_reference(model, b):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    out = run(model, b)
    model.set_attn_implementation(before)
    return out


def quantized(model, bits, mode="calibrated", calib=None):
    quantize_attention(model, AttentionQuantConfig(bits=bits, scale_mode=mode))
    calibrate_attention(model, calib or [batch(1), batch(3)])  # covers the test batch
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_high_bits_equal_eager_and_low_bits_bounded(family):
    m = build(family)
    b = batch(3)
    ref = eager_reference(m, b)
    errs = {}
    for bits in (24, 8, 6):
        quantized(m, bits)
        assert m.config._attn_implementation == ATTN_IMPLEMENTATION
        errs[bits] = (run(m, b) - ref).abs().max().item()
    assert errs[24] < 1e-5
    # coarser grids move the output further, but boundedly (output scale ~1)
    assert errs[24] < errs[8] < errs[6] < 0.2 * ref.abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_off_switch_restores_outputs_exactly(family):
    m = build(family)
    b = batch(3)
    impl = m.config._attn_implementation
    keys = set(m.state_dict())
    ref = run(m, b)
    quantized(m, 6)
    assert set(m.state_dict()) > keys  # scales live on the attention modules
    dequantize_attention(m)
    assert m.config._attn_implementation == impl
    assert set(m.state_dict()) == keys
    assert torch.equal(run(m, b), ref)
    # bits=None through quantize_attention is the same switch
    quantized(m, 8)
    quantize_attention(m, AttentionQuantConfig(bits=None))
    assert torch.equal(run(m, b), ref)


def test_int6_operand_levels_exact():
    x = torch.linspace(-3.0, 3.0, 2001)
    scale = torch.tensor(2.0)
    q = fake_quantize(x, scale, 6)
    step = 2.0 / 31
    pos = torch.unique(q[q > 0])
    assert pos.numel() == 31  # dense input hits every one of the 2^5-1 positive levels
    torch.testing.assert_close(pos, torch.arange(1, 32, dtype=torch.float32) * step)
    assert q.abs().max().item() == pytest.approx(2.0, abs=1e-6)
    inside = x.abs() <= 2.0
    assert (q - x)[inside].abs().max().item() <= step / 2 + 1e-6


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_int6_operands_in_model_take_at_most_31_positive_levels(family):
    m = quantized(build(family), 6)
    seen = {}

    def hook(name):
        def f(mod, inp, out):
            seen[name] = (out.detach(), float(mod.scale))
        return f

    for lname, quant in attention_quantizers(m).items():
        for op, q in quant.operands().items():
            q.register_forward_hook(hook(f"{lname}.{op}"))
    run(m, batch(3))
    assert len(seen) == 2 * 4
    for name, (out, scale) in seen.items():
        pos = torch.unique(out[out > 0])
        assert 1 <= pos.numel() <= 31, name
        k = pos / (scale / 31)  # every value is an integer multiple of the step
        torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_calibrated_scale_is_max_abs_of_calibration_data(family):
    m = build(family)
    quantize_attention(m, AttentionQuantConfig(bits=8, scale_mode="calibrated"))
    seen = {}

    def hook(name):
        def f(mod, inp, out):
            seen[name] = max(seen.get(name, 0.0), inp[0].abs().max().item())
        return f

    for lname, quant in attention_quantizers(m).items():
        for op, q in quant.operands().items():
            q.register_forward_hook(hook((lname, op)))
    scales = calibrate_attention(m, [batch(1), batch(2, seq=16)])
    for lname, ops in scales.items():
        for op, s in ops.items():
            assert s == pytest.approx(seen[(lname, op)], rel=0, abs=0), (lname, op)
    assert scales == attention_scales(m)
    assert all(not isinstance(q.scale, nn.Parameter)
               for quant in attention_quantizers(m).values() for q in quant.operands().values())


def test_percentile_calibration_is_mean_of_batch_percentiles():
    q = OperandQuantizer(AttentionQuantConfig(bits=8, calibration="percentile", percentile=50))
    q.observe(torch.arange(1.0, 101.0))        # 50th percentile of |x| = 50
    q.observe(-torch.arange(1.0, 101.0) * 3)   # 150
    q.freeze()
    assert q.scale.item() == 100.0


def test_learned_scale_gets_gradient_and_moves():
    m = quantized(build("bert"), 6, mode="learned")
    params = [q.scale for quant in attention_quantizers(m).values()
              for q in quant.operands().values()]
    assert all(isinstance(p, nn.Parameter) for p in params)
    before = [p.detach().clone() for p in params]
    outs = []  # loss on the attention outputs themselves (a tiny random model's head
    for _, att in attention_modules(m):  # output barely depends on attention)
        att.register_forward_hook(lambda mod, inp, out: outs.append(out[0]))
    m.train()
    m(**batch(3))
    sum(o.pow(2).sum() for o in outs).backward()
    grads = [p.grad.detach().clone() for p in params]
    assert all(g.abs().item() > 1e-6 for g in grads)
    torch.optim.SGD(params, lr=10.0).step()
    for p, b, g in zip(params, before, grads):
        assert (p.detach() - b).abs().item() > 1e-5
        torch.testing.assert_close(p.detach(), b - 10.0 * g)


def test_fake_quantize_lsq_gradients():
    x = torch.tensor([0.26, -0.74, 1.5, -3.0, 0.5], requires_grad=True)
    scale = torch.tensor(1.0, requires_grad=True)
    q = fake_quantize(x, scale, 3)  # 3 levels per side, step 1/3
    q.sum().backward()
    torch.testing.assert_close(q.detach(), torch.tensor([1 / 3, -2 / 3, 1.0, -1.0, 2 / 3]))
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))
    v = torch.tensor([0.78, -2.22, 1.5])  # x / step of the in-range values
    lsq = ((v.round() - v).sum() + 3 - 3) / 3  # clipped values add ±levels
    torch.testing.assert_close(scale.grad, lsq)


def test_dropout_matches_eager_in_training_mode():
    m = build("bert", attn_dropout=0.5).train()
    b = batch(3)
    m.set_attn_implementation("eager")
    torch.manual_seed(7)
    ref = m(**b)[0].detach()
    quantized(m, 24)
    m.train()
    torch.manual_seed(7)
    out = m(**b)[0].detach()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    m.eval()
    assert not torch.allclose(run(m, b), ref, atol=1e-3)  # dropout was really active


class SubLinear(nn.Linear):
    """Stand-in for an analog layer that replaced nn.Linear."""

    def forward(self, x):
        return super().forward(x) * 1.0


def test_works_after_linear_replacement():
    m = build("bert")
    for layer in m.encoder.layer:
        att = layer.attention.self
        for name in ("query", "key", "value"):
            old = getattr(att, name)
            new = SubLinear(old.in_features, old.out_features)
            new.load_state_dict(old.state_dict())
            setattr(att, name, new)
    b = batch(3)
    ref = eager_reference(m, b)
    quantized(m, 24)
    assert len(attention_quantizers(m)) == 2
    torch.testing.assert_close(run(m, b), ref, atol=1e-5, rtol=0)


def test_found_modules_per_family():
    counts = {f: len(attention_modules(build(f))) for f in FAMILIES}
    assert counts == {"bert": 2, "albert": 1, "distilbert": 2, "gpt2": 2, "llama": 2}


def test_bad_inputs():
    with pytest.raises(ValueError, match="no Hugging Face attention module"):
        quantize_attention(nn.Sequential(nn.Linear(4, 4)), AttentionQuantConfig())
    with pytest.raises(ValueError, match="quantize_attention"):
        calibrate_attention(build("bert"), [batch(1)])
    m = build("gpt2")
    quantize_attention(m, AttentionQuantConfig(bits=6))
    with pytest.raises(RuntimeError, match="calibrate_attention"):
        run(m, batch(1))
    with pytest.raises(ValueError, match="empty"):
        calibrate_attention(m, [])


@pytest.mark.parametrize("kwargs, field", [
    (dict(bits=1), "bits"), (dict(bits=True), "bits"), (dict(bits=8.0), "bits"),
    (dict(scale_mode="dynamic"), "scale_mode"), (dict(calibration="mse"), "calibration"),
    (dict(percentile=0), "percentile"), (dict(percentile=101.0), "percentile"),
])
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"AttentionQuantConfig.{field}"):
        AttentionQuantConfig(**kwargs)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_generation_matches_eager(family):
    m = build(family)
    b = dict(input_ids=batch(3)["input_ids"])  # no padding: greedy decoding with a KV cache
    m.set_attn_implementation("eager")
    ref = m.generate(**b, max_new_tokens=5, do_sample=False, pad_token_id=0)
    quantized(m, 24)
    assert torch.equal(m.generate(**b, max_new_tokens=5, do_sample=False, pad_token_id=0), ref)


def test_bert_cross_attention_is_quantized_too():
    torch.manual_seed(0)
    m = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, vocab_size=VOCAB, is_decoder=True,
                             add_cross_attention=True)).eval()
    b = dict(batch(3), encoder_hidden_states=torch.randn(2, 5, 32))
    ref = eager_reference(m, b)
    quantized(m, 24, calib=[b])
    assert len(attention_quantizers(m)) == 4  # self + cross per layer
    torch.testing.assert_close(run(m, b), ref, atol=1e-5, rtol=0)
