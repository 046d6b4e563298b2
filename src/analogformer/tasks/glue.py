"""GLUE tasks: file formats, loading, tokenization and length-aware batching.

Local data is read from a folder in the layout ``download_glue_data.py`` produces
(``<data_dir>/SST-2/dev.tsv`` ...), tab-separated with quoting OFF (GLUE text fields
contain raw ``"`` characters). With ``data_dir=None`` the HF ``datasets`` hub copy is used.

Class ids follow the HF ``datasets`` GLUE convention so that both sources agree:
MNLI ``entailment=0, neutral=1, contradiction=2``; QNLI / RTE ``entailment=0,
not_entailment=1``; the binary tasks use their ``0/1`` labels; STS-B is a float in [0, 5].
"""
from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

__all__ = [
    "GlueTaskSpec", "GlueExample", "EncodedDataset", "GLUE_TASKS",
    "get_task", "resolve_task", "load_glue_examples", "encode_examples", "make_loader",
]


@dataclass(frozen=True)
class GlueTaskSpec:
    """How one GLUE task is stored on disk and on the HF hub."""

    name: str                      # canonical lower-case key, e.g. "sst2"
    folder: str                    # GLUE folder name, e.g. "SST-2"
    header: tuple[str, ...] | None  # exact header line, None = no header (CoLA)
    n_columns: tuple[int, ...]      # allowed column counts of a data row
    text_a_col: int
    text_b_col: int | None
    label_col: int                  # negative = counted from the end of the row
    label_names: tuple[str, ...] | None  # file label strings in class-id order; None = regression
    splits: dict[str, str]          # split name -> file name
    hf_name: str                    # `datasets.load_dataset("glue", hf_name)`
    hf_splits: dict[str, str]       # split name -> HF split name
    hf_columns: tuple[str, str | None]

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.splits if s != "train")


_DEV = {"train": "train.tsv", "dev": "dev.tsv"}
_HF_DEV = {"train": "train", "dev": "validation"}
_MNLI_HEADER_START = ("index", "promptID", "pairID", "genre")

GLUE_TASKS: dict[str, GlueTaskSpec] = {
    "cola": GlueTaskSpec("cola", "CoLA", None, (4,), 3, None, 1, ("0", "1"), _DEV,
                         "cola", _HF_DEV, ("sentence", None)),
    "sst2": GlueTaskSpec("sst2", "SST-2", ("sentence", "label"), (2,), 0, None, 1, ("0", "1"),
                         _DEV, "sst2", _HF_DEV, ("sentence", None)),
    "mrpc": GlueTaskSpec("mrpc", "MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                         (5,), 3, 4, 0, ("0", "1"), _DEV, "mrpc", _HF_DEV,
                         ("sentence1", "sentence2")),
    "qqp": GlueTaskSpec("qqp", "QQP", ("id", "qid1", "qid2", "question1", "question2",
                                       "is_duplicate"), (6,), 3, 4, 5, ("0", "1"), _DEV,
                        "qqp", _HF_DEV, ("question1", "question2")),
    "stsb": GlueTaskSpec("stsb", "STS-B", ("index", "genre", "filename", "year", "old_index",
                                           "source1", "source2", "sentence1", "sentence2",
                                           "score"), (10,), 7, 8, -1, None, _DEV, "stsb",
                         _HF_DEV, ("sentence1", "sentence2")),
    # MNLI train rows have 12 columns (label1, gold_label), dev rows 16 (label1..5, gold_label);
    # the header is checked on its first four names only for that reason.
    "mnli": GlueTaskSpec("mnli", "MNLI", None, (12, 16), 8, 9, -1,
                         ("entailment", "neutral", "contradiction"),
                         {"train": "train.tsv", "dev_matched": "dev_matched.tsv",
                          "dev_mismatched": "dev_mismatched.tsv"}, "mnli",
                         {"train": "train", "dev_matched": "validation_matched",
                          "dev_mismatched": "validation_mismatched"}, ("premise", "hypothesis")),
    "qnli": GlueTaskSpec("qnli", "QNLI", ("index", "question", "sentence", "label"), (4,), 1, 2,
                         3, ("entailment", "not_entailment"), _DEV, "qnli", _HF_DEV,
                         ("question", "sentence")),
    "rte": GlueTaskSpec("rte", "RTE", ("index", "sentence1", "sentence2", "label"), (4,), 1, 2,
                        3, ("entailment", "not_entailment"), _DEV, "rte", _HF_DEV,
                        ("sentence1", "sentence2")),
}

# alias -> (canonical task, split that "dev" means for it, or None)
GLUE_ALIASES: dict[str, tuple[str, str | None]] = {
    "cola": ("cola", None), "sst2": ("sst2", None), "sst-2": ("sst2", None),
    "sst": ("sst2", None), "mrpc": ("mrpc", None), "qqp": ("qqp", None),
    "stsb": ("stsb", None), "sts-b": ("stsb", None), "sts": ("stsb", None),
    "mnli": ("mnli", None), "mnli-m": ("mnli", "dev_matched"),
    "mnli_matched": ("mnli", "dev_matched"), "mnli-mm": ("mnli", "dev_mismatched"),
    "mnli_mismatched": ("mnli", "dev_mismatched"), "qnli": ("qnli", None), "rte": ("rte", None),
}
_SPLIT_ALIASES = {"validation": "dev", "validation_matched": "dev_matched",
                  "validation_mismatched": "dev_mismatched"}


def resolve_task(task: str) -> tuple[GlueTaskSpec, str | None]:
    """Map a task name or alias (case-insensitive) to its spec and its implied dev split."""
    key = task.strip().lower()
    if key not in GLUE_ALIASES:
        raise ValueError(f"unknown GLUE task {task!r}; known names: {sorted(GLUE_ALIASES)} "
                         "(WNLI is not supported)")
    canonical, dev_split = GLUE_ALIASES[key]
    return GLUE_TASKS[canonical], dev_split


def get_task(task: str) -> GlueTaskSpec:
    """The task spec for a name or alias, e.g. ``get_task("SST-2").num_labels == 2``."""
    return resolve_task(task)[0]


def _resolve_split(spec: GlueTaskSpec, split: str, implied_dev: str | None) -> str:
    name = _SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if name == "dev" and implied_dev is not None:
        name = implied_dev
    if name not in spec.splits:
        raise ValueError(f"task {spec.name!r} has no split {split!r}; "
                         f"choose one of {list(spec.splits)}")
    return name


@dataclass(frozen=True)
class GlueExample:
    text_a: str
    text_b: str | None
    label: int | float


def _parse_label(spec: GlueTaskSpec, raw: str, path: Path, line_no: int) -> int | float:
    if spec.label_names is None:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 5.0:  # also rejects nan
            raise ValueError(f"{path}, line {line_no}: STS-B score {raw!r} is not a float "
                             "in [0, 5]")
        return value
    try:
        return spec.label_names.index(raw)
    except ValueError:
        raise ValueError(f"{path}, line {line_no}: label {raw!r} is not one of "
                         f"{list(spec.label_names)}") from None


def _read_tsv(spec: GlueTaskSpec, path: Path) -> list[GlueExample]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line_no}: not UTF-8 text (byte "
                         f"{data[e.start]:#04x} at offset {e.start}); GLUE files are UTF-8: re-encode the "
                         "file (e.g. iconv -f latin1 -t utf-8)") from None
    text = re.sub(r"(\r?\n[ \t]*)+$", "", text)  # blank lines at the end are no rows
    examples = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar=None),
                                  start=1):
        if line_no == 1 and (spec.name == "mnli" or spec.header is not None):
            _check_header(spec, row, path)
            continue
        if len(row) not in spec.n_columns:
            raise ValueError(f"{path}, line {line_no}: expected "
                             f"{' or '.join(map(str, spec.n_columns))} tab-separated "
                             f"columns for {spec.folder}, got {len(row)}")
        label = _parse_label(spec, row[spec.label_col], path, line_no)
        text_b = None if spec.text_b_col is None else row[spec.text_b_col]
        examples.append(GlueExample(row[spec.text_a_col], text_b, label))
    if not examples:
        raise ValueError(f"{path} holds no examples ({'only a header' if text else 'it is empty'}); "
                         f"expected {spec.folder} rows" + (" below the header" if spec.header else ""))
    return examples


def _check_header(spec: GlueTaskSpec, row: list, path: Path) -> None:
    # MNLI train and dev headers differ after their first four names
    if spec.name == "mnli" and tuple(row[:4]) != _MNLI_HEADER_START:
        raise ValueError(f"{path}, line 1: expected an MNLI header starting with "
                         f"{list(_MNLI_HEADER_START)}, got {row[:4]}")
    if spec.name != "mnli" and tuple(row) != spec.header:
        raise ValueError(f"{path}, line 1: expected the {spec.folder} header "
                         f"{list(spec.header)}, got {row}")


def _load_hub(spec: GlueTaskSpec, split: str) -> list[GlueExample]:
    try:
        import datasets  # optional dependency: pip install analogformer[hub]
    except ImportError as err:
        raise ImportError("data_dir=None loads GLUE from the Hugging Face hub, which needs "
                          "`pip install datasets`; or pass data_dir= a local GLUE folder") from err
    try:
        ds = datasets.load_dataset("glue", spec.hf_name, split=spec.hf_splits[split])
    except Exception as err:  # network / hub errors come in many types
        raise RuntimeError(f"could not load GLUE {spec.hf_name!r} from the Hugging Face hub "
                           f"({err}); pass data_dir= a local GLUE folder instead") from err
    col_a, col_b = spec.hf_columns
    texts_b = ds[col_b] if col_b is not None else [None] * len(ds)
    cast = float if spec.is_regression else int
    return [GlueExample(a, b, cast(y)) for a, b, y in zip(ds[col_a], texts_b, ds["label"])]


def load_glue_examples(task: str, split: str, data_dir: str | Path | None = None,
                       max_examples: int | None = None, seed: int = 0) -> list[GlueExample]:
    """Read one GLUE split as a list of :class:`GlueExample`.

    ``split`` is "train" or "dev" ("dev_matched" / "dev_mismatched" for MNLI; "mnli-m"
    and "mnli-mm" make "dev" mean one of them). ``max_examples`` keeps a seeded random
    subset (same seed, same rows) in file order; ``None`` keeps every row.
    """
    spec, implied_dev = resolve_task(task)
    split = _resolve_split(spec, split, implied_dev)
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples}")
    if data_dir is None:
        examples = _load_hub(spec, split)
    else:
        folder = Path(data_dir) / spec.folder
        if not folder.is_dir():
            raise ValueError(f"GLUE task folder {folder} does not exist; data_dir must be the "
                             f"GLUE root holding {spec.folder}/{spec.splits[split]}")
        path = folder / spec.splits[split]
        if not path.is_file():
            raise ValueError(f"GLUE file {path} does not exist; expected the {split!r} split "
                             f"of {spec.folder} as {spec.splits[split]}")
        examples = _read_tsv(spec, path)
    if max_examples is not None and max_examples < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
        examples = [examples[i] for i in keep]
    return examples


class EncodedDataset(torch.utils.data.Dataset):
    """Token ids of a list of examples, tokenized once, unpadded."""

    def __init__(self, input_ids: list[list[int]], token_type_ids: list[list[int]] | None,
                 labels: list[int | float], is_regression: bool, pad_token_id: int):
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} encodings but {len(labels)} labels")
        self.input_ids = input_ids
        self.token_type_ids = token_type_ids
        self.labels = labels
        self.is_regression = is_regression
        self.pad_token_id = pad_token_id
        self.lengths = [len(ids) for ids in input_ids]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> int:
        return i  # the collate function gathers rows itself, so items are just indices

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pad the rows ``indices`` to their longest length (dynamic padding)."""
        batch = pad_rows(self.input_ids, self.token_type_ids, indices, self.pad_token_id)
        dtype = torch.float32 if self.is_regression else torch.long
        batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=dtype)
        return batch


def pad_rows(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None,
             indices: Sequence[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows `indices` of unpadded token ids, right-padded to their longest length (dynamic
    padding): input_ids, attention_mask and, when the tokenizer made them, token_type_ids."""
    width = max(len(input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(input_ids[i])
        ids[row, :n] = torch.tensor(input_ids[i])
        mask[row, :n] = 1
        if token_type_ids is not None:
            types[row, :n] = torch.tensor(token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids is not None:
        batch["token_type_ids"] = types
    return batch


def encode_examples(examples: Sequence[GlueExample], tokenizer,
                    max_length: int = 128) -> EncodedDataset:
    """Tokenize every example once (truncated to ``max_length``, not padded)."""
    if not examples:
        raise ValueError("encode_examples got no examples")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
    texts_a = [e.text_a for e in examples]
    pairs = [e.text_b is not None for e in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("examples mix single sentences and sentence pairs")
    texts_b = [e.text_b for e in examples] if pairs[0] else None
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length, padding=False)
    is_regression = isinstance(examples[0].label, float)
    return EncodedDataset(enc["input_ids"], enc.get("token_type_ids"),
                          [e.label for e in examples], is_regression, tokenizer.pad_token_id)


class _LengthGroupedBatches(Sampler[list[int]]):
    """Deterministic batches of indices sorted by (length, index): minimal padding."""

    def __init__(self, lengths: Sequence[int], batch_size: int):
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        self.batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(encoded: EncodedDataset, batch_size: int, shuffle: bool,
                seed: int = 0) -> DataLoader:
    """A DataLoader of dynamically padded batches (dicts the HF model takes as ``**batch``).

    ``shuffle=True`` (training): a seeded random order, a fresh permutation every epoch from
    one ``torch.Generator`` so a run is reproducible. ``shuffle=False`` (evaluation): rows
    sorted by length so each batch pads little; labels travel with their rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        sampler = RandomSampler(encoded, generator=torch.Generator().manual_seed(seed))
        return DataLoader(encoded, batch_size=batch_size, sampler=sampler,
                          collate_fn=encoded.collate)
    return DataLoader(encoded, batch_sampler=_LengthGroupedBatches(encoded.lengths, batch_size),
                      collate_fn=encoded.collate)
