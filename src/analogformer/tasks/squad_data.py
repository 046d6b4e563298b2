"""SQuAD v1.1 data: reading the JSON, the by-article tuning / evaluation split of the dev
set, and the sliding-window encoding of questions for `AutoModelForQuestionAnswering`.

Splits. With a local folder (`data.squad_dir`) holding only ``dev-v1.1.json`` — the case on
these machines, where the train set is not available — the dev set is split **by article**:
the articles are ordered by the SHA-256 of their title (UTF-8) and the first
``round(EVAL_FRACTION · n_articles)`` (at least one) form the evaluation part ("dev"), the
others the tuning part ("train"). The split depends on the titles only (not on file order or
a seed), and no article is in both parts: on the official dev set, 38 articles (8,350
questions) tune and 10 (2,220) evaluate. A folder that also holds ``train-v1.1.json`` uses
the official split (train = that file, dev = the whole dev set); ``squad_dir: null`` reads
HF ``datasets.load_dataset("squad")`` (train / validation) from the hub.

Encoding: question and context as a pair, the context cut into windows of `max_length`
tokens that overlap by `doc_stride` tokens (fast-tokenizer `return_overflowing_tokens`),
character offsets kept for the context tokens. A training window holds the token positions
of the first reference answer, or points at the [CLS] token (position 0) when the answer
is not wholly inside it.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .glue import pad_rows

__all__ = ["QAExample", "EVAL_FRACTION", "DEV_FILE", "TRAIN_FILE", "read_squad_json", "split_articles",
           "load_squad_examples", "SquadFeatures", "encode_squad"]

EVAL_FRACTION = 0.2
DEV_FILE, TRAIN_FILE = "dev-v1.1.json", "train-v1.1.json"


@dataclass(frozen=True)
class QAExample:
    """One question: its id, article title, context paragraph, question and reference
    answers (texts and character starts in the context)."""

    id: str
    title: str
    context: str
    question: str
    answers: Tuple[str, ...]
    answer_starts: Tuple[int, ...]


def read_squad_json(path: Path) -> Dict[str, List[QAExample]]:
    """{article title: its questions, in file order} of a SQuAD v1.1 JSON file."""
    if not path.is_file():
        raise ValueError(f"SQuAD file {path} does not exist; data.squad_dir must be a folder holding "
                         f"{DEV_FILE} (e.g. ../shared/data/squad_v1.1), or null for the HF hub")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        articles: Dict[str, List[QAExample]] = {}
        for art in doc["data"]:
            rows = articles.setdefault(art["title"], [])
            for par in art["paragraphs"]:
                for qa in par["qas"]:
                    rows.append(QAExample(qa["id"], art["title"], par["context"], qa["question"],
                                          tuple(a["text"] for a in qa["answers"]),
                                          tuple(int(a["answer_start"]) for a in qa["answers"])))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a SQuAD v1.1 JSON file ({type(e).__name__}: {e}); expected "
                         "{data: [{title, paragraphs: [{context, qas: [{id, question, answers}]}]}]}") from None
    if not articles:
        raise ValueError(f"{path} holds no articles")
    return articles


def split_articles(titles: Sequence[str], eval_fraction: float = EVAL_FRACTION) -> Tuple[List[str], List[str]]:
    """(tuning titles, evaluation titles): the first round(eval_fraction · n) titles (at least
    one) in the order of their SHA-256 are the evaluation part."""
    titles = sorted(set(titles), key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    if len(titles) < 2:
        raise ValueError(f"a by-article split needs at least 2 articles, got {len(titles)}")
    n_eval = min(len(titles) - 1, max(1, round(eval_fraction * len(titles))))
    return titles[n_eval:], titles[:n_eval]


def _from_hub(split: str) -> List[QAExample]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("data.squad_dir: null reads SQuAD from the Hugging Face hub, which needs "
                          "`pip install datasets`; or set data.squad_dir to a local SQuAD v1.1 folder") from err
    try:
        ds = datasets.load_dataset("squad", split={"train": "train", "dev": "validation"}[split])
    except Exception as err:  # network / hub errors come in many types
        raise RuntimeError(f"could not load 'squad' from the Hugging Face hub ({err}); set "
                           "data.squad_dir to a local folder holding dev-v1.1.json") from err
    return [QAExample(r["id"], r["title"], r["context"], r["question"], tuple(r["answers"]["text"]),
                      tuple(int(s) for s in r["answers"]["answer_start"])) for r in ds]


def load_squad_examples(split: str, squad_dir: Optional[str | Path], max_examples: Optional[int] = None,
                        seed: int = 0) -> List[QAExample]:
    """The questions of `split` ("train": tuning, "dev": evaluation; see the module doc);
    `max_examples` keeps a seeded random subset of questions, in file order."""
    if split not in ("train", "dev"):
        raise ValueError(f"SQuAD has the splits 'train' and 'dev', not {split!r}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples}")
    if squad_dir is None:
        examples = _from_hub(split)
    else:
        folder = Path(squad_dir)
        if (folder / TRAIN_FILE).is_file():
            examples = [e for rows in read_squad_json(folder / (TRAIN_FILE if split == "train" else DEV_FILE)).values()
                        for e in rows]
        else:
            articles = read_squad_json(folder / DEV_FILE)
            tune, evaluate = split_articles(list(articles))
            keep = set(tune if split == "train" else evaluate)
            examples = [e for title, rows in articles.items() if title in keep for e in rows]
    if max_examples is not None and max_examples < len(examples):
        keep_idx = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
        examples = [examples[i] for i in keep_idx]
    return examples


class SquadFeatures(torch.utils.data.Dataset):
    """The windows ("features") of a list of questions, tokenized once, unpadded. Training
    features carry start / end token positions; evaluation features their question index
    and context offsets, for `answer_from_logits`."""

    def __init__(self, examples: Sequence[QAExample], enc: dict, training: bool, pad_token_id: int,
                 starts: Optional[List[int]] = None, ends: Optional[List[int]] = None):
        self.examples = list(examples)
        self.input_ids = enc["input_ids"]
        self.token_type_ids = enc.get("token_type_ids")
        self.example_index: List[int] = list(enc["overflow_to_sample_mapping"])
        self.offsets: List[List[Optional[Tuple[int, int]]]] = enc["context_offsets"]
        self.training, self.pad_token_id = training, pad_token_id
        self.starts, self.ends = starts, ends
        self.lengths = [len(ids) for ids in self.input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> int:
        return i  # the collate function gathers rows itself

    def collate(self, indices: Sequence[int]) -> dict:
        """Pad the rows `indices` to their longest length. Training batches are model kwargs
        (with `start_positions` / `end_positions`); evaluation batches add `feature_index`
        and `squad` (this object), which `evaluate` removes before the forward."""
        batch = pad_rows(self.input_ids, self.token_type_ids, indices, self.pad_token_id)
        if self.training:
            batch["start_positions"] = torch.tensor([self.starts[i] for i in indices])
            batch["end_positions"] = torch.tensor([self.ends[i] for i in indices])
        else:
            batch["feature_index"] = torch.tensor(list(indices))
            batch["squad"] = self
        return batch


def encode_squad(examples: Sequence[QAExample], tokenizer, max_length: int, doc_stride: int,
                 training: bool) -> SquadFeatures:
    """Sliding-window encoding of `examples` (see the module doc)."""
    if not examples:
        raise ValueError("encode_squad got no questions")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"SQuAD needs a fast tokenizer (character offsets of the windows); "
                         f"{type(tokenizer).__name__} is not one: save the model with its tokenizer.json "
                         "or load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    if not 0 <= doc_stride < max_length // 2:
        raise ValueError(f"data.doc_stride ({doc_stride}) must be >= 0 and below half of data.max_length "
                         f"({max_length}): windows overlap by doc_stride tokens")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    right = tokenizer.padding_side == "right"  # question first, context second (BERT & co.)
    questions = [e.question.lstrip() for e in examples]  # some SQuAD questions start with spaces
    contexts = [e.context for e in examples]
    ctx_seq = 1 if right else 0
    enc = tokenizer(questions if right else contexts, contexts if right else questions,
                    truncation="only_second" if right else "only_first", max_length=max_length,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding=False)
    offsets, starts, ends = [], [], []
    for f, offs in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(f)
        ctx = [tuple(o) if seq[k] == ctx_seq else None for k, o in enumerate(offs)]
        offsets.append(ctx)
        if training:
            s, e = _answer_tokens(examples[enc["overflow_to_sample_mapping"][f]], ctx)
            starts.append(s)
            ends.append(e)
    enc = dict(enc)
    enc["context_offsets"] = offsets
    return SquadFeatures(examples, enc, training, tokenizer.pad_token_id,
                         starts if training else None, ends if training else None)


def _answer_tokens(example: QAExample, ctx: List[Optional[Tuple[int, int]]]) -> Tuple[int, int]:
    """Token positions (start, end) of the first reference answer in a window, or (0, 0)
    when the window does not hold all of it."""
    if not example.answers:
        return 0, 0
    a0 = example.answer_starts[0]
    a1 = a0 + len(example.answers[0])
    inside = [k for k, o in enumerate(ctx) if o is not None]
    if not inside or ctx[inside[0]][0] > a0 or ctx[inside[-1]][1] < a1:
        return 0, 0
    start = next(k for k in inside if ctx[k][1] > a0)
    end = next(k for k in reversed(inside) if ctx[k][0] < a1)
    return start, end
