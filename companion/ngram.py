"""Count-based n-gram language models with the classic smoothing methods.

A sentence is any sequence of tokens: a list of words, or a plain string, whose tokens are its
characters. The model adds one ``<s>`` before each sentence (it is only ever a context) and one
``</s>`` after it (it is predicted, so the model knows where sentences end). Training tokens seen
fewer than ``min_count`` times become ``<unk>``, and so does every unseen token at test time.

>>> lm = NGramLM(order=2, smoothing="add_k", k=1.0).fit([["a", "b", "a"], ["b", "a"]])
>>> lm.vocab
['</s>', '<unk>', 'a', 'b']
>>> round(lm.prob("b", ["a"]), 4)          # (count(a b) + 1) / (count(a) + 1 * 4) = 2/7
0.2857
>>> round(lm.perplexity([["a", "b"]]), 3)   # (1/3 * 2/7 * 1/6) ** (-1/3)
3.979

Smoothing methods (``smoothing=``):

- ``"mle"``: relative frequencies ``c(h w) / c(h)``; an unseen context falls back to its longest
  seen suffix. Unseen n-grams get probability 0, so perplexity can be infinite.
- ``"add_k"``: ``(c(h w) + k) / (c(h) + k |V|)``; ``k=1`` is Laplace smoothing.
- ``"interpolated"``: Jelinek-Mercer, ``lam * P_ML(w | h) + (1 - lam) * P(w | shorter h)``,
  down to the uniform distribution; an unseen context uses the shorter one alone.
- ``"absolute"``: subtract ``discount`` from every seen count and give the mass freed to the
  shorter context (interpolated absolute discounting).
- ``"kneser_ney"``: absolute discounting whose lower orders count *continuations* (how many
  different tokens precede an n-gram) instead of occurrences: interpolated Kneser-Ney.

The counts do not depend on the smoothing method or on a lower order, so ``fit`` once with the
highest order and try the rest with ``with_settings(order=2, smoothing="add_k")``.
"""

from __future__ import annotations

import copy
import gc
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SMOOTHING_METHODS = ("mle", "add_k", "interpolated", "absolute", "kneser_ney")

# One table per order: context tuple -> (total count after the context, {next token: count}).
Table = dict[tuple[str, ...], tuple[int, dict[str, int]]]


def _table(counts: Counter) -> Table:
    """{(h..., w): c} -> {h: (total count after h, {w: c})}, so P(w | h) needs two lookups."""
    table: dict = {}
    for gram, c in counts.items():
        entry = table.get(gram[:-1])
        if entry is None:
            entry = table[gram[:-1]] = [0, {}]
        entry[0] += c
        entry[1][gram[-1]] = c
    return {h: (total, nxt) for h, (total, nxt) in table.items()}


@dataclass
class NGramLM:
    """An n-gram language model: ``fit`` on sentences of tokens, then ``prob``/``perplexity``."""

    order: int = 3
    smoothing: str = "kneser_ney"
    k: float = 1.0  # add_k: pseudo-count added to every n-gram
    lam: float = 0.7  # interpolated: weight of the longer context at every order
    discount: float = 0.75  # absolute / kneser_ney: subtracted from every seen count
    min_count: int = 1  # training tokens seen fewer times become <unk>
    vocab: list[str] = field(default_factory=list, init=False, repr=False)
    _fitted_order: int = field(default=0, init=False, repr=False)
    _known: frozenset = field(default_factory=frozenset, init=False, repr=False)
    _raw: list[Table] = field(default_factory=list, init=False, repr=False)
    _continuation: list[Table] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"order must be an integer >= 1, got {self.order!r}")
        if self.smoothing not in SMOOTHING_METHODS:
            raise ValueError(f"unknown smoothing {self.smoothing!r}; choose one of {SMOOTHING_METHODS}")
        if self.k <= 0:
            raise ValueError(f"k must be > 0 (use smoothing='mle' for no smoothing), got {self.k}")
        if not 0 < self.lam < 1:
            raise ValueError(f"lam must be in (0, 1), got {self.lam}")
        if not 0 < self.discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {self.discount}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self._fitted_order and self.order > self._fitted_order:
            raise ValueError(f"the counts go up to order {self._fitted_order}; refit for order {self.order}")

    # ---------------------------------------------------------------- training
    def fit(self, sentences: Iterable[Sequence[str]]) -> NGramLM:
        """Build the vocabulary and count every n-gram of order 1..order; returns self."""
        # Millions of small tuples and dicts make Python's cycle collector run again and again for
        # nothing (counts hold no cycles): pausing it made fitting the movie reviews 2-3 times faster.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._fit(sentences)
        finally:
            if enabled:
                gc.enable()

    def _fit(self, sentences: Iterable[Sequence[str]]) -> NGramLM:
        sentences = [list(s) for s in sentences]
        if not any(sentences):
            raise ValueError("fit() needs at least one non-empty sentence")
        for s in sentences:
            if BOS in s or EOS in s:
                raise ValueError(f"sentences must not contain {BOS} or {EOS}: the model adds them")
        freq = Counter(t for s in sentences for t in s)
        kept = sorted(t for t, c in freq.items() if c >= self.min_count and t != UNK)
        self.vocab = [EOS, UNK] + kept
        self._known = frozenset(kept)
        # All sentences in one stream "<s> a b </s> <s> c </s> ...": zip() cuts every m-gram at C
        # speed; those that run across a sentence boundary have a <s> after their first token.
        stream = []
        for s in sentences:
            stream += [BOS] + [t if t in self._known else UNK for t in s] + [EOS]
        n = self.order
        grams: list[Counter] = [Counter()]
        for m in range(1, n + 1):
            counts = Counter(zip(*(stream[i:] for i in range(m))))
            for gram in [g for g in counts if BOS in g[1:] or g == (BOS,)]:
                del counts[gram]
            grams.append(counts)
        # Kneser-Ney's lower orders: an m-gram counts once per distinct token before it. An m-gram
        # that starts with <s> has no token before it, so it keeps its ordinary count.
        continuation: list[Counter] = [Counter()]
        for m in range(1, n):
            counts = Counter(gram[1:] for gram in grams[m + 1])
            counts.update({gram: c for gram, c in grams[m].items() if gram[0] == BOS})
            continuation.append(counts)
        self._raw = [{}] + [_table(grams[m]) for m in range(1, n + 1)]
        self._continuation = [{}] + [_table(continuation[m]) for m in range(1, n)]
        self._fitted_order = n
        return self

    def with_settings(self, **changes) -> NGramLM:
        """A copy that shares the counts, with other settings (a lower order, another smoothing)."""
        allowed = {"order", "smoothing", "k", "lam", "discount"}
        if not changes.keys() <= allowed:
            raise ValueError(f"with_settings() changes only {sorted(allowed)}, got {sorted(changes)}")
        other = copy.copy(self)
        for name, value in changes.items():
            setattr(other, name, value)
        other._check()
        return other

    # ---------------------------------------------------------------- scoring
    def count(self, ngram: Sequence[str]) -> int:
        """How often the n-gram occurs in the training sentences (after <unk> mapping and padding)."""
        gram = tuple(ngram)
        if not 1 <= len(gram) <= self._fitted_order:
            raise ValueError(f"n-grams of length 1..{self._fitted_order} are counted, got {len(gram)}")
        entry = self._raw[len(gram)].get(gram[:-1])
        return entry[1].get(gram[-1], 0) if entry else 0

    def count_of_counts(self, order: int) -> Counter:
        """{r: how many distinct n-grams of this order occur exactly r times} (Good-Turing's n_r)."""
        self._require_fitted()
        if not 1 <= order <= self._fitted_order:
            raise ValueError(f"n-grams of order 1..{self._fitted_order} are counted, got {order}")
        return Counter(c for _, nxt in self._raw[order].values() for c in nxt.values())

    def followers(self, context: Sequence[str]) -> dict[str, int]:
        """Counts of the tokens seen right after ``context`` (taken as is: no ``<s>`` is added).

        ``sum(lm.followers(h).values())`` is c(h) and ``lm.followers(h).get(w, 0)`` is c(h w).
        """
        self._require_fitted()
        h = tuple(self._map(t) for t in context)
        if len(h) >= self._fitted_order:
            raise ValueError(f"contexts of up to {self._fitted_order - 1} tokens are counted, got {len(h)}")
        entry = self._raw[len(h) + 1].get(h)
        return dict(entry[1]) if entry else {}

    def _require_fitted(self) -> None:
        if not self._fitted_order:
            raise RuntimeError("call fit() first")

    def _map(self, token: str) -> str:
        return token if token in self._known or token in (BOS, EOS) else UNK

    def _context(self, context: Sequence[str]) -> tuple[str, ...]:
        tokens = [self._map(t) for t in context]
        if not tokens or tokens[0] != BOS:
            tokens = [BOS] + tokens
        if EOS in tokens or BOS in tokens[1:]:
            raise ValueError(f"a context is one sentence so far: {EOS} and a second {BOS} are not allowed")
        return tuple(tokens[max(0, len(tokens) - self.order + 1):]) if self.order > 1 else ()

    def _table_for(self, m: int) -> Table:
        kn_lower = self.smoothing == "kneser_ney" and m < self.order
        return self._continuation[m] if kn_lower else self._raw[m]

    def _prob(self, word: str, h: tuple[str, ...]) -> float:
        """P(word | h) for a mapped word and a mapped context of length < order."""
        V = len(self.vocab)
        if self.smoothing == "mle":
            for start in range(len(h) + 1):  # the longest seen suffix of the context
                entry = self._raw[len(h) - start + 1].get(h[start:])
                if entry:
                    return entry[1].get(word, 0) / entry[0]
        if self.smoothing == "add_k":
            total, nxt = self._raw[len(h) + 1].get(h, (0, {}))
            return (nxt.get(word, 0) + self.k) / (total + self.k * V)
        p = 1.0 / V  # interpolated, absolute, kneser_ney: from the uniform distribution upwards
        for m in range(1, len(h) + 2):
            entry = self._table_for(m).get(h[len(h) - m + 1:])
            if entry is None:
                continue  # an unseen context adds nothing: keep the shorter context's estimate
            total, nxt = entry
            if self.smoothing == "interpolated":
                p = self.lam * nxt.get(word, 0) / total + (1 - self.lam) * p
            else:
                d = self.discount
                p = max(nxt.get(word, 0) - d, 0) / total + d * len(nxt) / total * p
        return p

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        """P(word | context), where context is the sentence so far (``<s>`` is added in front)."""
        self._require_fitted()
        if word == BOS:
            raise ValueError(f"{BOS} is never predicted; it is only a context")
        return self._prob(self._map(word), self._context(context))

    def distribution(self, context: Sequence[str] = ()) -> dict[str, float]:
        """P(w | context) for every w in the vocabulary, most probable first."""
        self._require_fitted()
        h = self._context(context)
        probs = {w: self._prob(w, h) for w in self.vocab}
        return dict(sorted(probs.items(), key=lambda kv: -kv[1]))

    def token_logprobs(self, sentence: Sequence[str]) -> list[float]:
        """Natural-log probability of each token of the sentence and of the final ``</s>``."""
        self._require_fitted()
        tokens = [BOS] + [self._map(t) for t in sentence] + [EOS]
        if BOS in tokens[1:] or EOS in tokens[:-1]:
            raise ValueError(f"sentences must not contain {BOS} or {EOS}: the model adds them")
        out = []
        for i in range(1, len(tokens)):
            p = self._prob(tokens[i], tuple(tokens[max(0, i - self.order + 1):i]) if self.order > 1 else ())
            out.append(math.log(p) if p > 0 else -math.inf)
        return out

    def logprob(self, sentence: Sequence[str]) -> float:
        """log P(sentence </s>) = the sum of the chain rule's log-probabilities (natural log)."""
        return sum(self.token_logprobs(sentence))

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """exp(-mean log-probability per predicted token); each sentence's </s> is a token too."""
        total, n = 0.0, 0
        for s in sentences:
            lps = self.token_logprobs(s)
            total += sum(lps)
            n += len(lps)
        if n == 0:
            raise ValueError("perplexity() needs at least one sentence")
        return math.exp(-total / n) if total > -math.inf else math.inf
