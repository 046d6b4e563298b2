"""One table decides which matrices are analog: analogize, the tile map and pruning agree
on the same set for every supported family (ALBERT included: its embedding projection and
pooler stay digital in all three)."""
import copy

import pytest
import torch
import transformers as t

import analogformer as af
from analogformer.hardware.mapping import MappingConfig, matrix_shapes
from analogformer.nn.targets import BLOCKS, DEFAULT_EXCLUDE, analog_matrices, block_of
from analogformer.pruning import find_targets

COMMON = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "bert":
        return t.BertForSequenceClassification(t.BertConfig(**COMMON, num_labels=2))
    if family == "albert":
        return t.AlbertForSequenceClassification(t.AlbertConfig(**COMMON, embedding_size=16, num_labels=2))
    if family == "distilbert":
        return t.DistilBertForSequenceClassification(t.DistilBertConfig(
            vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64))
    if family == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    if family == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**COMMON, num_key_value_heads=2))
    raise KeyError(family)


FAMILIES = ["bert", "albert", "distilbert", "gpt2", "llama"]
# analog matrices per transformer layer: q, k, v (GPT-2: one c_attn), o, fc1 (LLaMA: gate, up), fc2
PER_LAYER = {"bert": 6, "albert": 6, "distilbert": 6, "gpt2": 4, "llama": 7}
LAYERS = {"bert": 2, "albert": 1, "distilbert": 2, "gpt2": 2, "llama": 2}  # ALBERT shares its layer


@pytest.mark.parametrize("family", FAMILIES)
def test_analogize_mapping_and_pruning_choose_the_same_matrices(family):
    model = _model(family)
    analog = {name for name, _ in af.analog_layers(af.analogize(copy.deepcopy(model), af.AnalogConfig()))}
    mapped = {s.name for s in matrix_shapes(model, MappingConfig())}
    prunable = set(find_targets(model, BLOCKS))
    table = {m.name for m in analog_matrices(model)}
    assert analog == mapped == table
    assert prunable == {n for n in table if block_of(n) is not None}
    assert len(analog) == PER_LAYER[family] * LAYERS[family]
    assert all(block_of(n) in BLOCKS for n in analog)  # every analog matrix has its block


def test_albert_embedding_projection_and_pooler_stay_digital():
    model = _model("albert")
    names = {name for name, _ in af.analog_layers(af.analogize(model, af.AnalogConfig()))}
    assert not any("embedding_hidden_mapping_in" in n or "pooler" in n or "classifier" in n for n in names)
    assert af.AnalogConfig().exclude == DEFAULT_EXCLUDE


def test_include_narrows_the_same_table_and_a_bad_regex_names_the_field():
    model = _model("bert")
    only_fc2 = af.AnalogConfig(include=(r"output\.dense$",), exclude=(r"attention",) + DEFAULT_EXCLUDE)
    names = [n for n, _ in af.analog_layers(af.analogize(copy.deepcopy(model), only_fc2))]
    assert names == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    with pytest.raises(ValueError, match=r"AnalogConfig.include: invalid regex '\('"):
        af.analogize(model, af.AnalogConfig(include=("(",)))
