"""Retrieval for an assistant that answers from a knowledge base: passages, BM25, dense vectors, hybrid.

- knowledge: the question/answer pairs of the ChatterBot corpus (English and Chinese; each
  distinct answer is one passage) and the Python reference topics that ship with Python
  (`pydoc_data.topics`), cut into passages of at most `max_words` words;
- sparse search: BM25 (Robertson et al.), written out in `bm25_scores` and, for real use, the
  `bm25s` package (the same scores, tested); terms are words from a regular expression in English,
  characters and character bigrams in Chinese (no word segmenter: on the rag recipe's validation
  questions they retrieve better than jieba's words, as in the CJK analysers of Lucene);
- dense search: all-MiniLM-L6-v2 sentence vectors (mean-pooled, L2-normalised), ranked by dot
  product; `DenseIndex` keeps them in one matrix;
- hybrid: reciprocal-rank fusion of both rankings (Cormack et al., 2009);
- metrics: recall@k and mean reciprocal rank against labels that do not come from any retriever.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's and bm25s's default token pattern
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")  # runs of Chinese characters
LANGUAGES = ("english", "chinese")


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: `pid` is its index in the knowledge base, `source` where it comes from."""

    pid: int
    source: str
    text: str


# ----------------------------------------------------------------------------- knowledge

def faq(language: str = "english") -> tuple[list[Passage], list[tuple[str, set[int]]]]:
    """ChatterBot as a knowledge base: every distinct answer (a bot turn that follows a user turn)
    is a passage; every distinct question comes with the set of passages that answer it."""
    from companion.corpora import read_chatterbot

    answers: dict[str, int] = {}
    questions: dict[str, set[int]] = {}
    for turns in read_chatterbot(language):
        for question, answer in zip(turns[0::2], turns[1::2]):
            pid = answers.setdefault(answer, len(answers))
            questions.setdefault(question, set()).add(pid)
    passages = [Passage(pid, f"chatterbot-{language}", text) for text, pid in answers.items()]
    return passages, list(questions.items())


def chunk_words(text: str, max_words: int = 120, overlap: int = 20) -> list[str]:
    """`text` cut into windows of at most `max_words` words, each sharing `overlap` words with the last."""
    if max_words < 1 or not 0 <= overlap < max_words:
        raise ValueError(f"need max_words >= 1 and 0 <= overlap < max_words, got {max_words}, {overlap}")
    words = text.split()
    step = max_words - overlap
    return [" ".join(words[i:i + max_words]) for i in range(0, max(len(words) - overlap, 1), step)]


def python_topics(max_words: int = 120, overlap: int = 20) -> list[Passage]:
    """The Python reference topics shipped with Python (`pydoc_data.topics`), cut into passages."""
    from pydoc_data.topics import topics

    passages: list[Passage] = []
    for name in sorted(topics):
        for chunk in chunk_words(topics[name], max_words, overlap):
            passages.append(Passage(len(passages), f"python:{name}", chunk))
    return passages


def held_out_sentence_queries(passages: Sequence[Passage], n: int, *, seed: int = 0,
                              min_words: int = 8) -> tuple[list[Passage], list[tuple[str, set[int]]]]:
    """Queries whose labels no retriever chose: one sentence taken out of each of `n` random
    passages (the inverse cloze task of Lee et al., 2019). Returns the passages with each such
    sentence removed, and (sentence, the pids that held it: overlapping chunks can share it)."""
    rng = random.Random(seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    edited, queries, used = list(passages), [], set()
    for pid in order:
        if len(queries) == n:
            break
        if pid in used:
            continue
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", edited[pid].text) if len(s.split()) >= min_words]
        if len(sentences) < 2:  # the passage must keep something once the sentence is out
            continue
        sentence = rng.choice(sentences)
        holders = {i for i, p in enumerate(edited) if sentence in p.text}
        for i in holders:
            p = edited[i]
            edited[i] = Passage(p.pid, p.source, p.text.replace(sentence, " ").strip())
        used |= holders
        queries.append((sentence, holders))
    if len(queries) < n:
        raise ValueError(f"only {len(queries)} passages have two sentences of >= {min_words} words; asked {n}")
    return edited, queries


# ----------------------------------------------------------------------------- sparse: BM25

def words(text: str, language: str = "english") -> list[str]:
    """BM25's terms: lower-cased words of two or more characters (English); in Chinese, every
    character of each run of Chinese characters and every pair of neighbours in it (unigrams and
    bigrams), then the words of what is not Chinese.

    >>> words("我喜欢Python吗", "chinese")
    ['我', '喜', '欢', '我喜', '喜欢', '吗', 'python']
    """
    if language == "chinese":
        text = text.lower()
        terms = []
        for run in HAN.findall(text):
            terms += list(run) + [a + b for a, b in zip(run, run[1:])]
        return terms + WORD.findall(HAN.sub(" ", text))
    if language != "english":
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return WORD.findall(text.lower())


def bm25_scores(query: Sequence[str], documents: Sequence[Sequence[str]], *, k1: float = 1.5,
                b: float = 0.75) -> np.ndarray:
    """BM25 score of every document for one query (terms already split), with Lucene's idf:
    sum over query terms t of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)).

    Lucene (and `bm25s`, method "lucene") leave out the constant factor (k1 + 1): their scores are
    these divided by k1 + 1, and rank the documents in the same order."""
    n = len(documents)
    if n == 0:
        raise ValueError("no documents")
    lengths = np.array([len(d) for d in documents], dtype=np.float64)
    average = lengths.mean() if lengths.mean() > 0 else 1.0
    counts = [Counter(d) for d in documents]
    scores = np.zeros(n)
    for term in query:  # a term repeated in the query counts each time, as in bm25s
        tf = np.array([c[term] for c in counts], dtype=np.float64)
        df = int((tf > 0).sum())
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        scores += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths / average))
    return scores


class BM25Index:
    """BM25 over passages with the `bm25s` package (Lucene's variant, k1 = 1.5, b = 0.75)."""

    def __init__(self, passages: Sequence[Passage], language: str = "english") -> None:
        import bm25s

        self.language = language
        self.model = bm25s.BM25()
        self.model.index([words(p.text, language) for p in passages], show_progress=False)
        self.size = len(passages)

    def scores(self, query: str) -> np.ndarray:
        """The score of every passage for one query (all 0 for a query without a single term)."""
        terms = words(query, self.language)
        if not terms:
            return np.zeros(self.size)
        return np.asarray(self.model.get_scores(terms), dtype=np.float64)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[int]]:
        """The ids of the `k` best passages for each query, best first (ties: lower id first)."""
        return [top_k(self.scores(q), k) for q in queries]


# ----------------------------------------------------------------------------- dense: MiniLM

def load_encoder(name: str = MINILM):
    """(model, tokenizer) of a sentence encoder, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)


@torch.no_grad()
def embed(texts: Sequence[str], encoder, tokenizer, *, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """L2-normalised mean-pooled vectors (float32, one row per text), as sentence-transformers makes them."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy() if out else np.zeros((0, encoder.config.hidden_size), np.float32)


class DenseIndex:
    """Normalised passage vectors in one matrix; a query's scores are one matrix-vector product."""

    def __init__(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a matrix (passages x dimensions), got shape {vectors.shape}")
        self.vectors = np.asarray(vectors, dtype=np.float32)

    def scores(self, query_vectors: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query (row) with each passage (column)."""
        return np.atleast_2d(query_vectors) @ self.vectors.T

    def search(self, query_vectors: np.ndarray, k: int = 10) -> list[list[int]]:
        """The ids of the `k` most similar passages for each query vector, best first."""
        return [top_k(row, k) for row in self.scores(query_vectors)]


# ----------------------------------------------------------------------------- ranking and metrics

def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the `k` highest scores, best first; equal scores keep the lower index first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:k]]


def fusion_scores(rankings: Sequence[Sequence[int]], k: int = 60) -> dict[int, float]:
    """Reciprocal-rank fusion's score of every id: the sum of 1 / (k + rank) over the rankings it
    is in (rank from 1), in the order of first appearance."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, pid in enumerate(ranking, start=1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (k + rank)
    return fused


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60, top: int | None = None) -> list[int]:
    """One ranking from several (Cormack et al., 2009): ids by `fusion_scores`, best first; ties
    keep the order of first appearance."""
    fused = fusion_scores(rankings, k)
    ordered = sorted(fused, key=lambda pid: -fused[pid])
    return ordered[:top] if top is not None else ordered


def recall_at_k(rankings: Sequence[Sequence[int]], gold: Sequence[set[int]], k: int) -> float:
    """Share of queries with at least one gold passage among their first `k` results."""
    _check(rankings, gold)
    return float(np.mean([bool(set(r[:k]) & g) for r, g in zip(rankings, gold)]))


def mean_reciprocal_rank(rankings: Sequence[Sequence[int]], gold: Sequence[set[int]]) -> float:
    """Mean over queries of 1 / (rank of the first gold passage), 0 when none was retrieved."""
    _check(rankings, gold)
    return float(np.mean([next((1.0 / (i + 1) for i, pid in enumerate(r) if pid in g), 0.0)
                          for r, g in zip(rankings, gold)]))


def _check(rankings: Sequence, gold: Sequence) -> None:
    if len(rankings) != len(gold):
        raise ValueError(f"{len(rankings)} rankings but {len(gold)} gold sets")
    if not rankings:
        raise ValueError("no queries")
