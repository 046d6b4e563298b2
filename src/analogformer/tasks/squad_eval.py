"""SQuAD v1.1 scoring and answer extraction.

Scoring follows the definition of the official v1.1 evaluation script (``evaluate-v1.1.py``
of the SQuAD site), re-implemented here: an answer is *normalised* by lower-casing it,
removing every ASCII punctuation character (``string.punctuation``), removing the articles
``a``, ``an``, ``the`` as whole words, and collapsing white space. Exact match (EM) is the
equality of the normalised strings; F1 is the token-level F1 of the normalised strings'
white-space tokens (bag of tokens with multiplicity; 0 when no token is shared, which
includes an empty prediction against a non-empty reference). A question scores the
maximum over its reference answers; a set scores the mean over questions, × 100 (as the
official script prints it). A question without a prediction scores 0 for both.

Answer extraction (`answer_from_logits`) is the usual post-processing of a model's start /
end logits over sliding windows ("features") of one question: the `n_best` highest start
and end positions of every window, pairs that lie inside the context, end ≥ start and span
at most `max_answer_length` tokens, scored by start + end logit; the best pair over all
windows of the question gives the answer text, cut out of the context by the tokenizer's
character offsets.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["normalize_answer", "exact_match", "f1", "score_question", "squad_scores",
           "references_from_json", "WindowLogits", "answer_from_logits"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str, reference: str) -> float:
    """Token-level F1 of the normalised strings (in [0, 1])."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    shared = sum((Counter(pred) & Counter(ref)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_question(prediction: str, references: Sequence[str]) -> Tuple[float, float]:
    """(EM, F1) of one prediction: the maximum over the reference answers."""
    if not references:
        raise ValueError("a SQuAD question needs at least one reference answer")
    return (max(exact_match(prediction, r) for r in references),
            max(f1(prediction, r) for r in references))


def squad_scores(references: Mapping[str, Sequence[str]],
                 predictions: Mapping[str, str]) -> Dict[str, float]:
    """``{"exact_match", "f1"}`` in points (× 100, as the official v1.1 script) of
    `predictions` ({question id: answer text}) against `references` ({question id: reference
    answers}); averaged over every question of `references`, a missing prediction scoring 0.
    A prediction for a question `references` lacks is an error (it would be silently unscored)."""
    if not references:
        raise ValueError("squad_scores got no questions")
    unknown = [q for q in predictions if q not in references]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction(s) for question ids the references lack, e.g. "
                         f"{unknown[:3]}; score predictions against the same SQuAD file")
    em_sum = f1_sum = 0.0
    for qid, refs in references.items():
        if qid in predictions:
            em, f = score_question(predictions[qid], refs)
            em_sum += em
            f1_sum += f
    n = len(references)
    return {"exact_match": 100.0 * em_sum / n, "f1": 100.0 * f1_sum / n}


def references_from_json(dataset: Mapping) -> Dict[str, list]:
    """{question id: reference answer texts} of a SQuAD v1.1 JSON document (the parsed file)."""
    if "data" not in dataset:
        raise ValueError("not a SQuAD JSON document: it has no 'data' list")
    return {qa["id"]: [a["text"] for a in qa["answers"]]
            for article in dataset["data"] for par in article["paragraphs"] for qa in par["qas"]}


@dataclass(frozen=True)
class WindowLogits:
    """One window (feature) of a question: its start / end logits (at least as long as the
    window; padding beyond is ignored) and per token the (start, end) character offsets
    in the context, or None for a token outside the context (question, special, padding)."""

    start_logits: np.ndarray
    end_logits: np.ndarray
    offsets: Sequence[Optional[Tuple[int, int]]]


def answer_from_logits(context: str, windows: Sequence[WindowLogits], n_best: int = 20,
                       max_answer_length: int = 30) -> str:
    """The highest-scoring answer span of one question over all its windows ("" when no
    window holds a valid span)."""
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best ({n_best}) and max_answer_length ({max_answer_length}) must be >= 1")
    best_score, best = -np.inf, None
    for w in windows:
        n = len(w.offsets)
        starts = np.argsort(np.asarray(w.start_logits[:n]))[::-1][:n_best]
        ends = np.argsort(np.asarray(w.end_logits[:n]))[::-1][:n_best]
        for s in starts:
            if w.offsets[s] is None:
                continue
            for e in ends:
                if w.offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(w.start_logits[s]) + float(w.end_logits[e])
                if score > best_score:
                    best_score, best = score, (w.offsets[s][0], w.offsets[e][1])
    return "" if best is None else context[best[0]:best[1]]
