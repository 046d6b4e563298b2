"""Tiny causal LMs (LLaMA, GPT-2, Phi from configs), a word-level tokenizer and a tiny
WikiText-2-like folder for the LM tests."""
import random

import torch
import transformers as t
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["<unk>", "<eos>"] + ("the a cat dog sat ran on mat and . once upon time there was "
                              "big small red house tree - , =").split()


def tiny_tokenizer():
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def tiny_lm(family: str, seed: int = 0):
    torch.manual_seed(seed)
    v = len(WORDS)
    if family == "llama":
        m = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                             eos_token_id=1, pad_token_id=1, bos_token_id=None))
    elif family == "gpt2":  # n_embd = 32 and a 32 × 32 c_proj: a transposed save would load silently wrong
        m = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                           eos_token_id=1, bos_token_id=1, pad_token_id=1))
    elif family == "phi":
        m = t.PhiForCausalLM(t.PhiConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64, eos_token_id=1,
                                         pad_token_id=1, bos_token_id=1))
    else:
        raise KeyError(family)
    return m.eval()


def save_tiny(family: str, path):
    tiny_lm(family).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def random_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    body = [w for w in WORDS[2:] if w not in "-,="]
    lines = [" ".join(rng.choice(body) for _ in range(12)) for _ in range(n_words // 12)]
    return "\n".join(lines) + "\n"


def wikitext_dir(root):
    """A folder in the layout of ../shared/data/wikitext2 (valid with ' @-@ ', raw test)."""
    (root / "raw").mkdir(parents=True)
    (root / "tokenized").mkdir()
    (root / "tokenized" / "valid.txt").write_text(random_text(600, 1).replace(" big ", " big @-@ red "))
    (root / "raw" / "wiki.test.raw.lf").write_text(random_text(600, 2))
    return root
