"""Raw text for causal-LM tasks: where it comes from, and fixed-length token windows.

A text source is a local folder (WikiText-2 as staged in ``../shared/data/wikitext2``),
text files of the user's own (one file per split), or an HF ``datasets`` dataset when the
hub is reachable. The text of a split is tokenized once as one stream (no special tokens)
and cut into windows of ``window_tokens`` starting every ``stride_tokens``; only full
windows are kept. With a stride shorter than the window (the sliding-window perplexity of
the HF docs), a window scores only the tokens no earlier window scored, the rest is
context: its ``labels`` are ``-100`` there. Training windows carry ``labels = input_ids``.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from ..config import check_choice, check_positive, fail

__all__ = ["LMDataConfig", "WindowDataset", "read_split_text", "detokenize_wikitext",
           "make_windows", "window_loader", "WIKITEXT2_FILES"]

# split -> file under the WikiText-2 folder; "train" is the validation split (the train
# split is not staged: PROVENANCE.md), "test" the raw test split sub-word perplexity uses
WIKITEXT2_FILES: Dict[str, str] = {"train": "tokenized/valid.txt", "valid": "tokenized/valid.txt",
                                   "test": "raw/wiki.test.raw.lf"}


@dataclass
class LMDataConfig:
    """Text and windows of the causal-LM tasks (`wikitext2`, `text`)."""

    wikitext2_dir: Optional[str] = "../shared/data/wikitext2"
    """Folder of WikiText-2 as staged (PROVENANCE.md there): the `wikitext2` task trains /
    calibrates on `tokenized/valid.txt` (detokenized: " @-@ " -> "-") and evaluates on the raw
    test split `raw/wiki.test.raw.lf`; null loads `wikitext-2-raw-v1` with HF `datasets`
    (validation / test) from the hub."""
    text_files: Dict[str, str] = field(default_factory=dict)
    """Files of your own for the `text` task: {train: path, eval: path} (UTF-8 text; `eval`
    is what the study reports, `train` feeds calibration and HWA training)."""
    window_tokens: int = 512
    """Tokens per window (the context of every scored token is at most this long)."""
    stride_tokens: Optional[int] = None
    """A new window starts every this many tokens; null = `window_tokens` (no overlap).
    Shorter strides give every scored token more context (sliding-window perplexity)."""
    subsample: str = "seeded"
    """How `max_eval_examples` / `max_train_examples` pick windows: "seeded" (a random subset
    drawn from the study seed, in text order) or "first" (the first N windows of the text)."""

    def __post_init__(self):
        check_positive(self, "window_tokens", integer=True)
        check_positive(self, "stride_tokens", allow_none=True, integer=True)
        check_choice(self, "subsample", {"seeded", "first"})
        if self.window_tokens < 2:
            fail("LMDataConfig", "window_tokens", f"must be >= 2 (a token and the one it predicts), "
                                                  f"got {self.window_tokens}")
        if self.stride_tokens is not None and self.stride_tokens > self.window_tokens:
            fail("LMDataConfig", "stride_tokens", f"{self.stride_tokens} > window_tokens {self.window_tokens} "
                                                  "would skip text; use a stride <= the window")
        if not isinstance(self.text_files, dict):
            fail("LMDataConfig", "text_files", f"must map splits to files, e.g. {{train: a.txt, eval: b.txt}}, "
                                               f"got {self.text_files!r}")
        bad = sorted(set(self.text_files) - {"train", "eval"})
        if bad:
            fail("LMDataConfig", "text_files", f"unknown split(s) {bad}; use train and eval")
        for split, f in self.text_files.items():
            if not isinstance(f, (str, Path)) or not Path(f).is_file():
                fail("LMDataConfig", "text_files", f"{split}: {f!r} is not a file; give the path of a UTF-8 "
                                                   f"text file (relative to the folder the study runs from)")

    @property
    def stride(self) -> int:
        return self.stride_tokens or self.window_tokens


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's number/hyphen splitting (" @-@ " -> "-", " @,@ " -> ",", " @.@ " -> ".")."""
    return re.sub(r" @([-,.])@ ", r"\1", text)


def _read_utf8(path: Path, what: str) -> str:
    if not path.is_file():
        raise ValueError(f"{what}: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {path} is not UTF-8 text ({e}); re-encode it "
                         "(e.g. iconv -f latin1 -t utf-8)") from None
    if not text.strip():
        raise ValueError(f"{what}: {path} holds no text")
    return text


def read_split_text(source: str, split: str, cfg: LMDataConfig) -> str:
    """The raw text of `split` ("train" or "eval") of the text source `source` ("wikitext2"
    or "text")."""
    if source == "text":
        if split not in cfg.text_files:
            raise ValueError(f"the `text` task needs data.lm.text_files.{split}: a UTF-8 text file of yours "
                             f"(e.g. data: {{lm: {{text_files: {{train: my_train.txt, eval: my_eval.txt}}}}}})")
        return _read_utf8(Path(cfg.text_files[split]), f"data.lm.text_files.{split}")
    file_split = "test" if split == "eval" else "train"
    if cfg.wikitext2_dir is None:
        return _hub_wikitext2(file_split)
    folder = Path(cfg.wikitext2_dir)
    if not folder.is_dir():
        raise ValueError(f"data.lm.wikitext2_dir: {folder} is not a folder; point it at the staged "
                         "WikiText-2 (../shared/data/wikitext2, with raw/ and tokenized/), or set it to "
                         "null to load wikitext-2-raw-v1 from the Hugging Face hub")
    text = _read_utf8(folder / WIKITEXT2_FILES[file_split], "data.lm.wikitext2_dir")
    return detokenize_wikitext(text) if file_split == "train" else text


def _hub_wikitext2(split: str) -> str:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("data.lm.wikitext2_dir: null loads WikiText-2 from the Hugging Face hub, which "
                          "needs `pip install datasets`; or set it to a local copy "
                          "(../shared/data/wikitext2)") from err
    hf_split = {"train": "validation", "test": "test"}[split]
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=hf_split)["text"]
    except Exception as e:  # offline hub, missing dataset
        raise ValueError(f"cannot load wikitext-2-raw-v1 ({hf_split}) from the hub ({type(e).__name__}: "
                         f"{str(e)[:200]}); set data.lm.wikitext2_dir to a local copy") from e
    return "".join(rows)


def make_windows(ids: torch.Tensor, window: int, stride: int, train: bool) -> List[Dict[str, torch.Tensor]]:
    """Full windows of the 1-D token stream `ids`; evaluation labels mask the tokens an
    earlier window scored already (a window's first token is never scored: nothing in it
    predicts it)."""
    n = int(ids.numel())
    if n < window:
        raise ValueError(f"the text has {n} tokens, fewer than one window of {window}: lower "
                         "data.lm.window_tokens or give more text")
    out, prev_end = [], 0
    for begin in range(0, n - window + 1, stride):
        end = begin + window
        x = ids[begin:end].clone()
        labels = x.clone()
        if not train:
            labels[: window - (end - prev_end)] = -100
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels})
        prev_end = end
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Token windows of one split (`make_windows`), optionally a subset of them."""

    def __init__(self, windows: List[Dict[str, torch.Tensor]], n_tokens: int):
        self.windows = windows
        self.n_tokens = n_tokens  # of the whole split's token stream

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return self.windows[i]


def encode_windows(text: str, tokenizer, cfg: LMDataConfig, train: bool, max_windows: Optional[int],
                   seed: int) -> WindowDataset:
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    windows = make_windows(ids, cfg.window_tokens, cfg.window_tokens if train else cfg.stride, train)
    if max_windows is not None and max_windows < len(windows):
        if cfg.subsample == "first":
            keep = range(max_windows)
        else:
            keep = sorted(random.Random(seed).sample(range(len(windows)), max_windows))
        windows = [windows[i] for i in keep]
    return WindowDataset(windows, int(ids.numel()))


def _collate(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def window_loader(dataset: WindowDataset, batch_size: int, shuffle: bool, seed: int = 0):
    """Batches of windows: a seeded random order for training, text order for evaluation."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=_collate)
