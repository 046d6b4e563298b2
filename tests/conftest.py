import pytest
import torch

transformers = pytest.importorskip("transformers")


def tiny(family: str):
    """Tiny random HF models built from configs (no weights downloaded), eval mode."""
    torch.manual_seed(0)
    t = transformers
    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    if family == "bert":
        m = t.BertForSequenceClassification(t.BertConfig(**common, num_labels=2))
    elif family == "albert":
        m = t.AlbertModel(t.AlbertConfig(**common, embedding_size=16))
    elif family == "distilbert":
        m = t.DistilBertModel(t.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4,
                                                 hidden_dim=64, max_position_embeddings=64))
    elif family == "mobilebert":
        m = t.MobileBertModel(t.MobileBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 embedding_size=16, intra_bottleneck_size=16,
                                                 max_position_embeddings=64))
    elif family == "gpt2":
        m = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    elif family == "llama":
        m = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             intermediate_size=64, max_position_embeddings=64))
    else:
        raise KeyError(family)
    return m.eval()


FAMILIES = ["bert", "albert", "distilbert", "mobilebert", "gpt2", "llama"]


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny tensors: a second thread only adds contention, up to
    100x slower on a loaded machine); a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def logit_mse_setup(model, rows: int):
    """One batch of `rows` random-token rows for `model`, 16×16 tiles with fresh output-noise
    draws (no 32 MiB pool per device instance), and a metric with an exact zero: the mean
    squared difference of the logits from the model's as given (lower is better)."""
    import analogformer as af

    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(5, 99, (rows, 12), generator=g),
                 attention_mask=torch.ones(rows, 12, dtype=torch.long))
    with torch.no_grad():
        ref = model(**batch).logits

    def mse(m):
        with torch.no_grad():
            return float(((m(**batch).logits - ref) ** 2).mean())
    cfg = af.AnalogConfig()
    cfg.tile.rows = cfg.tile.cols = 16
    cfg.adc.noise_pool_size = None
    return batch, cfg, mse


def main_output(out):
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def sweep_setup():
    """A tiny BERT, one batch of random tokens, 16×16 tiles and a continuous metric (the mean
    logit: any change of a single draw or of the calibration shows) for sweep tests."""
    import analogformer as af

    model = tiny("bert")
    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(5, 99, (6, 12), generator=g),
                 attention_mask=torch.ones(6, 12, dtype=torch.long))
    cfg = af.AnalogConfig()
    cfg.tile.rows = cfg.tile.cols = 16

    def evaluate(m):
        with torch.no_grad():
            return {"mean_logit": float(m(**batch).logits.mean())}
    return model, batch, cfg, evaluate
